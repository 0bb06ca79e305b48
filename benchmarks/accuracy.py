"""One command, the accuracy figures of the issues: `python benchmarks/accuracy.py [--models cls,rec,det]`.

For each PP-OCR model of the rapidocr-onnxruntime wheel, on real pixels (scikit-image's
bundled text images, disjoint calibration and evaluation crops) and in one run, it
compares against onnxruntime float:

  qcc -O2 / -O3 (reference interpreter -- bit-identical to the compiled x86 library)
  onnxruntime quantize_static with its defaults (QDQ, per-channel), same calibration data

Metrics follow the task: cls = argmax agreement; rec = CTC greedy-decoded sequence
exact-match rate (and per-frame argmax agreement); det = IoU of the probability map
thresholded at 0.3 (DBNet's binarisation threshold), mean over images; enc = the
transformer encoder cut out of rec (attention, layer norm, MLP), output cosine
similarity. Also each qcc
build's int8_mac_fraction. Slow (the interpreter runs det at 384x576): minutes.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import MODELS, model_path  # noqa: E402

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def _gray_sources():
    from skimage import data

    return [data.page(), data.text(), data.camera(), data.coins(), data.astronaut().mean(axis=2),
            data.coffee().mean(axis=2), data.chelsea().mean(axis=2)]


def det_images(n: int, seed: int) -> List[np.ndarray]:
    """DBNet inputs [1,3,384,576]: windows of the text images (page, text) and of natural
    images, resized, ImageNet-normalised as PP-OCR's det preprocessing does."""
    import cv2

    rng = np.random.default_rng(seed)
    srcs = _gray_sources()
    out = []
    for i in range(n):
        img = srcs[[0, 1, 0, 1, 2, 3, 4, 5, 6][i % 9]].astype(np.uint8)
        H, W = img.shape
        h = int(rng.integers(H // 2, H + 1))
        w = min(W, int(h * 1.5 * rng.uniform(0.8, 1.25)))
        y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        crop = cv2.resize(img[y:y + h, x:x + w], (576, 384), interpolation=cv2.INTER_LINEAR)
        rgb = np.repeat(crop[None].astype(np.float32) / 255.0, 3, axis=0)
        out.append(((rgb - IMAGENET_MEAN) / IMAGENET_STD)[None].astype(np.float32))
    return out


def rec_images(n: int, seed: int) -> List[np.ndarray]:
    """CRNN inputs [1,3,48,320]: real text lines (tests/models.py text_line_sources)
    resized to 48 high, scaled to [-1, 1], right-padded, as PP-OCR's rec preprocessing."""
    import cv2

    from models import random_line_crop, text_line_sources

    rng = np.random.default_rng(seed)
    sources = text_line_sources()
    out = []
    while len(out) < n:
        _, crop = random_line_crop(rng, sources, 14)
        if crop is None:
            continue
        h, w = crop.shape
        rw = min(320, int(np.ceil(48 * w / h)))
        r = cv2.resize(crop, (rw, 48)).astype(np.float32)
        x = np.zeros((3, 48, 320), np.float32)
        x[:, :, :rw] = (r / 255.0 - 0.5) / 0.5
        out.append(x[None])
    return out


def cls_images(n: int, seed: int) -> List[np.ndarray]:
    from models import text_line_crops

    x, _, _ = text_line_crops(n, seed=seed)
    return [x[i:i + 1] for i in range(n)]


# The transformer encoder of PP-OCRv4 rec (SVTR: 2 blocks of layer norm, 8-head
# attention, layer norm, MLP with swish), cut out of the trained model: tokens in,
# tokens out.
ENC_IN, ENC_OUT = "transpose_43.tmp_0", "p2o.Add.275"


def encoder_model(work: Path) -> Path:
    import onnx
    import onnx.utils

    src = model_path(MODELS["rec"][0])
    m = onnx.load(str(src))
    if not any(v.name == ENC_IN for v in m.graph.value_info):
        m = onnx.shape_inference.infer_shapes(m)
    full = work / "rec_inferred.onnx"
    onnx.save(m, str(full))
    out = work / "svtr_encoder.onnx"
    onnx.utils.extract_model(str(full), str(out), [ENC_IN], [ENC_OUT], check_model=False)
    return out


def enc_tokens(n: int, seed: int) -> List[np.ndarray]:
    """Encoder inputs: the tokens the float rec model feeds its encoder on real text lines."""
    import onnx

    m = onnx.load(str(model_path(MODELS["rec"][0])))
    m.graph.output.append(onnx.helper.make_empty_tensor_value_info(ENC_IN))
    import onnxruntime as ort

    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = m.graph.input[0].name
    return [s.run([ENC_IN], {inp: x})[0] for x in rec_images(n, seed)]


def fixed_hw(value_info) -> Optional[Tuple[int, int]]:
    """The (H, W) a model input (its ONNX ValueInfo) fixes, or None when either is symbolic."""
    dims = value_info.type.tensor_type.shape.dim
    hw = tuple(d.dim_value for d in dims[2:4]) if len(dims) == 4 else ()
    return hw if len(hw) == 2 and all(hw) else None


def resized(xs: List[np.ndarray], hw: Tuple[int, int]) -> List[np.ndarray]:
    """Inputs [1, C, h, w] stretched to hw: a model with another fixed input size fed the same
    real crops (its own preprocessing would resize them likewise)."""
    import cv2

    return [cv2.resize(x[0].transpose(1, 2, 0), (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
            .transpose(2, 0, 1)[None].astype(np.float32) for x in xs]


DATA = {"cls": cls_images, "rec": rec_images, "det": det_images, "enc": enc_tokens}


def ctc_decode(logits: np.ndarray) -> tuple:
    """Greedy CTC: argmax per frame, merge repeats, drop blank (index 0)."""
    best = logits.argmax(-1).ravel()
    out, prev = [], -1
    for k in best:
        if k != prev and k != 0:
            out.append(int(k))
        prev = k
    return tuple(out)


def metrics(model: str, ref: List[np.ndarray], got: List[np.ndarray]) -> Dict[str, float]:
    if model == "cls":
        return {"agreement": float(np.mean([r.argmax() == g.argmax() for r, g in zip(ref, got)]))}
    if model == "rec":
        return {"exact_strings": float(np.mean([ctc_decode(r) == ctc_decode(g) for r, g in zip(ref, got)])),
                "frame_agreement": float(np.mean([np.mean(r.argmax(-1) == g.argmax(-1)) for r, g in zip(ref, got)]))}
    if model == "enc":
        cos = [float(np.dot(r.ravel(), g.ravel()) / (np.linalg.norm(r) * np.linalg.norm(g))) for r, g in zip(ref, got)]
        return {"cosine": float(np.mean(cos)), "cosine_min": float(np.min(cos))}
    # per image (the mean, and the worst image with how much text float found in it) and
    # pooled over the set (intersections and unions summed, as segmentation benchmarks
    # do): an image with a few text pixels swings the mean, not the pooled figure
    ious, inter, union, text = [], 0, 0, []
    for r, g in zip(ref, got):
        a, b = r > 0.3, g > 0.3
        i, u = int(np.logical_and(a, b).sum()), int(np.logical_or(a, b).sum())
        ious.append(1.0 if u == 0 else i / u)
        inter, union = inter + i, union + u
        text.append(int(a.sum()))
    worst = int(np.argmin(ious))
    return {"iou": float(np.mean(ious)), "iou_pooled": inter / union if union else 1.0,
            "iou_min": float(ious[worst]), "text_px_of_worst": text[worst],
            "text_px_median": float(np.median(text))}


def spread(values: List[float], digits: int = 4) -> str:
    """One run's value, or several runs' mean and [min, max]."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cls,rec,det,enc")
    ap.add_argument("--levels", default="O2,O3")
    ap.add_argument("--calib", type=int, default=0, help="calibration samples (default per model)")
    ap.add_argument("--eval", type=int, default=0, help="evaluation samples (default per model)")
    ap.add_argument("--calib-sets", type=int, default=1, metavar="K",
                    help="repeat each build with K disjoint calibration sets and print each metric's "
                         "mean and range: one set's figure can be a lucky or an unlucky draw")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="a qcc pass-context option for the qcc builds, e.g. min_int8_fraction=0.9")
    ap.add_argument("--model", action="append", default=[], metavar="KEY=KIND:FILE.onnx",
                    help="one more OCR model, fed and scored like KIND (cls, rec or det), e.g. "
                         "v3det=det:ch_PP-OCRv3_det_infer.onnx; add KEY to --models (repeatable)")
    args = ap.parse_args(argv)
    more = {}
    for spec in args.model:
        key, _, rest = spec.partition("=")
        kind, _, file = rest.partition(":")
        if not key or kind not in ("cls", "rec", "det") or not file:
            ap.error(f"--model {spec!r}: expected KEY=KIND:FILE.onnx with KIND cls, rec or det")
        more[key] = (kind, Path(file).resolve())
    extra = {}
    for kv in args.option:
        k, _, v = kv.partition("=")
        try:
            extra[k] = float(v)
        except ValueError:
            extra[k] = v

    import onnx

    import qcc
    from models import ort_quantize_static, ort_session
    from qcc.driver import build_report
    from qcc.interp import Interpreter
    from qcc.pipelines import PIPELINES

    sizes = {"cls": (32, 208), "rec": (24, 48), "det": (8, 12), "enc": (24, 48)}
    work = Path(tempfile.mkdtemp(prefix="qcc-acc-"))
    for name in args.models.split(","):
        kind = more[name][0] if name in more else name
        if name in more:
            path, shape = more[name][1], None  # the shape of KIND's inputs
        elif name == "enc":
            path = encoder_model(work)
            shape = None
        else:
            fname, shape = MODELS[name]
            path = model_path(fname)
        n_cal, n_eval = args.calib or sizes[kind][0], args.eval or sizes[kind][1]
        # calibration seeds 1, 3, 4, ...: 2 is the evaluation set's
        calib_sets = [DATA[kind](n_cal, seed=s) for s in [1] + list(range(3, args.calib_sets + 2))]
        evals = DATA[kind](n_eval, seed=2)
        first = onnx.load(str(path), load_external_data=False).graph.input[0]
        inp, hw = first.name, fixed_hw(first)
        if hw and hw != evals[0].shape[2:]:  # e.g. PP-OCRv5's 80x160 text-line orientation model
            calib_sets, evals = [resized(c, hw) for c in calib_sets], resized(evals, hw)
        shape = shape or evals[0].shape
        sess = ort_session(path)
        ref = [sess.run(None, {inp: x})[0] for x in evals]
        rows: Dict[str, List] = {}  # label -> [(metrics, int8 fraction) per calibration set]
        failed = None
        for calib in calib_sets:
            for level in args.levels.split(","):
                g = qcc.import_onnx(str(path), {inp: shape})
                ctx = qcc.PassContext(options={"calib": [{inp: x} for x in calib], **extra})
                qcc.PassManager(PIPELINES[level]).run(g, ctx)
                it = Interpreter(g)
                got = [next(iter(it.run({inp: x}).values())) for x in evals]
                frac = build_report(g, 0, [])["summary"]["int8_mac_fraction"]
                # PIPELINES["O3"] is -O3's mse recipe alone; `qcc compile -O3` measures it against
                # -O2's on held-out calibration batches and builds the closer one (driver._choose_recipe)
                label = "qcc -O3 mse recipe" if level == "O3" else f"qcc -{level}"
                rows.setdefault(label, []).append((metrics(kind, ref, got), frac))
            logging.getLogger().setLevel(logging.ERROR)  # quantize_static's per-initializer warnings
            try:
                with tempfile.TemporaryDirectory() as d:
                    qpath = ort_quantize_static(path, Path(d) / "q.onnx", inp, calib)
                    qs = ort_session(qpath)
                    got = [qs.run(None, {inp: x})[0] for x in evals]
                rows.setdefault("onnxruntime quantize_static", []).append((metrics(kind, ref, got), 1.0))
            except Exception as e:  # noqa: BLE001 - the contender failed: say so, keep qcc's rows
                failed = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        sets = f" x {len(calib_sets)} calibration sets (mean [min, max])" if len(calib_sets) > 1 else ""
        print(f"{name}: {n_eval} eval / {n_cal} calib samples{sets}")
        for label, runs in rows.items():
            ms = "  ".join(f"{k} {spread([m[k] for m, _ in runs])}" for k in runs[0][0])
            print(f"  {label:<30} {ms}  int8_mac_fraction {spread([f for _, f in runs], 3)}")
        if failed:
            print(f"  {'onnxruntime quantize_static':<30} failed: {failed}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
