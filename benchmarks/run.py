"""One command, every number: `python benchmarks/run.py [--models cls,rec,det] [--threads N]`.

For each PP-OCR model shipped in the rapidocr-onnxruntime wheel it builds, in one
process: qcc int8 (-O2, calibrated on real text crops), qcc float (-O0),
onnxruntime float and onnxruntime int8 (its quantize_static QDQ defaults, per-channel,
same calibration data). Then it times them interleaved — round robin, one run of
each per round — with the same thread count, and prints medians and ratios. The
machine is noisy: only ratios from one interleaved run mean anything.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

MODELS = {
    "cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192)),
    "rec": ("ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 320)),
    "det": ("ch_PP-OCRv4_det_infer.onnx", (1, 3, 384, 576)),
}


def model_path(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    return Path(spec.origin).parent / "models" / name


def text_crops(shape, n, seed=0):
    """Real pixels: crops of scikit-image's bundled text images, normalised like PP-OCR."""
    from skimage import data, transform

    imgs = [data.text(), data.page(), data.astronaut().mean(axis=2), data.coffee().mean(axis=2)]
    rng = np.random.default_rng(seed)
    _, c, h, w = shape
    out = []
    for i in range(n):
        img = imgs[i % len(imgs)].astype(np.float32)
        H, W = img.shape
        ch = int(rng.integers(max(8, H // 8), max(9, H // 2)))
        cw = min(W, int(ch * w / h))
        y, x = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
        crop = transform.resize(img[y:y + ch, x:x + cw], (h, w), anti_aliasing=True, preserve_range=True)
        crop = (crop / 255.0 - 0.5) / 0.5
        out.append(np.broadcast_to(crop, (c, h, w)).astype(np.float32)[None])
    return out


def ort_session(path, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_int8(path, shape, calib, work: Path):
    """onnxruntime's quantize_static with its defaults (QDQ), per-channel weights."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    m = onnx.load(str(path))
    inp = m.graph.input[0]
    for d, v in zip(inp.type.tensor_type.shape.dim, shape):
        d.dim_value = v
    fixed = work / "fixed.onnx"
    onnx.save(m, str(fixed))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{inp.name: x} for x in calib])

        def get_next(self):
            return next(self.it, None)

    out = work / "int8.onnx"
    quantize_static(str(fixed), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="cls,rec,det")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--calib", type=int, default=16)
    args = ap.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # its quantizer's chatter is not a result
    import qcc

    print(f"threads {args.threads}, {args.rounds} interleaved rounds, medians in ms")
    print(f"{'model':<5} {'qcc int8':>9} {'qcc f32':>8} {'ort f32':>8} {'ort int8':>9}   "
          f"{'int8/ort-int8':>13} {'int8/ort-f32':>12} {'int8/qcc-f32':>12}")
    for key in args.models.split(","):
        name, shape = MODELS[key]
        path = model_path(name)
        inp = "x"
        calib = text_crops(shape, args.calib)
        x = text_crops(shape, 1, seed=99)[0]
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            np.savez(tmp / "calib.npz", **{inp: np.concatenate(calib)})
            qcc.compile(path, tmp / "q8", opt_level="O2", calib=str(tmp / "calib.npz"), input_shapes={inp: shape})
            qcc.compile(path, tmp / "f32", opt_level="O0", input_shapes={inp: shape})
            runners = {
                "qcc int8": qcc.load(tmp / "q8"),
                "qcc f32": qcc.load(tmp / "f32"),
                "ort f32": ort_session(path, args.threads),
                "ort int8": ort_session(ort_int8(path, shape, calib, tmp), args.threads),
            }
            calls = {
                k: (lambda r=r: r.run(None, {inp: x})) if k.startswith("ort") else (lambda r=r: r.run({inp: x}))
                for k, r in runners.items()
            }
            for f in calls.values():  # warm up
                f()
            times = {k: [] for k in calls}
            for _ in range(args.rounds):
                for k, f in calls.items():
                    t0 = time.perf_counter()
                    f()
                    times[k].append((time.perf_counter() - t0) * 1e3)
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"{key:<5} {med['qcc int8']:9.2f} {med['qcc f32']:8.2f} {med['ort f32']:8.2f} {med['ort int8']:9.2f}   "
                  f"{med['qcc int8'] / med['ort int8']:13.2f} {med['qcc int8'] / med['ort f32']:12.2f} "
                  f"{med['qcc int8'] / med['qcc f32']:12.2f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
