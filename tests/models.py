"""Builders of the real models and data sets the accuracy tests use, and shared helpers.

Everything here is deterministic (fixed splits and seeds) and uses only data that
ships inside installed packages: scikit-learn's digits, scikit-image's sample
images and the PP-OCR models inside rapidocr-onnxruntime.

  digits_cnn()            a small conv net trained on the digits, exported by hand to ONNX
  text_line_crops(...)    PP-OCR-cls inputs: real text-line crops, half turned 180 degrees
  tiny_conv_model()       conv-relu-pool-gemm in a few lines, for calibration-data tests
  run_pipeline(...)       import + a named qcc pipeline through the pass manager
  ort_run / ort_quantize_static   the onnxruntime references
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

SEED = 0


# --- running things --------------------------------------------------------------------

def run_pipeline(model, shapes: Dict[str, Tuple[int, ...]], calib=None, level: str = "O2",
                 verify_each: bool = True, pipeline: Optional[str] = None, **options):
    """Import `model` and run the `level` pipeline (or the `pipeline` text) on it, with
    ctx.options["calib"] = calib. Returns (graph, ctx)."""
    import qcc
    from qcc.pipelines import PIPELINES

    g = qcc.import_onnx(model, shapes)
    ctx = qcc.PassContext(options={"calib": calib, **options})
    qcc.PassManager(pipeline or PIPELINES[level], verify_each=verify_each).run(g, ctx)
    return g, ctx


def interp_batches(graph, name: str, x: np.ndarray, batch: int) -> np.ndarray:
    """The graph's (single) output over `x`, `batch` rows at a time (len(x) % batch == 0)."""
    from qcc.interp import Interpreter

    it = Interpreter(graph)
    outs = [next(iter(it.run({name: x[i:i + batch]}).values())) for i in range(0, len(x), batch)]
    return np.concatenate(outs)


def ort_session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1  # reproducible numbers
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_run(path, name: str, x: np.ndarray, batch: Optional[int] = None) -> np.ndarray:
    """The model's first output over `x` with onnxruntime, `batch` rows at a time."""
    s = ort_session(path)
    b = batch or len(x)
    return np.concatenate([s.run(None, {name: x[i:i + b]})[0] for i in range(0, len(x), b)])


def ort_quantize_static(model_path, out_path, name: Optional[str], calib: Sequence) -> Path:
    """onnxruntime's static int8 quantization (QDQ, per-channel, defaults otherwise). `calib`:
    arrays for the input `name`, or feeds ({input: array}) for a model of several inputs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([a if isinstance(a, dict) else {name: a} for a in calib])

        def get_next(self):
            return next(self.it, None)

    import onnx
    from onnx import version_converter

    m = onnx.load(str(model_path))
    if next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) < 13:
        # per-channel DequantizeLinear (its axis) needs opset 13: what onnxruntime's docs tell
        # its users to do with an older export (PP-OCRv5's are opset 11)
        model_path = Path(out_path).with_suffix(".opset13.onnx")
        onnx.save(version_converter.convert_version(m, 13), str(model_path))
    quantize_static(str(model_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    return Path(out_path)


# --- a tiny conv net for calibration-data tests -------------------------------------------

def tiny_conv_model(seed: int = SEED):
    """x[N,3,8,8] -> Conv(4, 3x3, pad 1, bias) -> Relu -> GlobalAveragePool -> Flatten
    -> Gemm(4 -> 2) = y: small enough to compile in a blink, with every quantized op kind."""
    from onnx import TensorProto, helper, numpy_helper as nh

    rng = np.random.default_rng(seed)
    inits = [nh.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w"),
             nh.from_array(rng.normal(0, 0.5, 4).astype(np.float32), "b"),
             nh.from_array(rng.normal(0, 0.5, (4, 2)).astype(np.float32), "fw"),
             nh.from_array(np.array([0.25, -0.5], np.float32), "fb")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


# --- digits: a small conv net --------------------------------------------------------------

@dataclass
class Digits:
    """A trained digits classifier and its data. Inputs are pixel/16, shaped [N, 1, 8, 8]."""

    model: "object"  # onnx.ModelProto
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_name: str = "x"


def _patches3x3(x: np.ndarray) -> np.ndarray:
    """[N, 8, 8] -> [N, 8, 8, 9]: each pixel's 3x3 neighbourhood, zero padded (conv pads=1)."""
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    return np.stack([p[:, i:i + 8, j:j + 8] for i in range(3) for j in range(3)], axis=-1)


def _bn_identity(name: str, out: np.ndarray, axis_reduce: Tuple[int, ...]):
    """A BatchNormalization whose running statistics are the true ones of `out` and which,
    given them, is the identity: mean=mu, var=sigma^2, scale=sigma, bias=mu."""
    from onnx import numpy_helper as nh

    mu = out.mean(axis=axis_reduce).astype(np.float32)
    sd = out.std(axis=axis_reduce).astype(np.float32)
    sd = np.maximum(sd, 1e-3)
    inits = [nh.from_array(sd, name + ".scale"), nh.from_array(mu, name + ".bias"),
             nh.from_array(mu, name + ".mean"), nh.from_array(sd * sd, name + ".var")]
    return inits, [name + ".scale", name + ".bias", name + ".mean", name + ".var"]


@functools.lru_cache(maxsize=1)
def digits_cnn() -> Digits:
    """Conv(16 3x3 filters) -> BN -> ReLU -> MaxPool 2x2 -> Gemm 64 -> BN -> ReLU -> Gemm 32
    -> BN -> ReLU -> Gemm 10 -> Softmax, trained on scikit-learn's digits.

    The conv filters are learned without labels (the 8 leading principal components of
    the 3x3 training patches and their negatives, so ReLU keeps both signs); the dense
    layers are an MLPClassifier(hidden=(64, 32), relu) trained on the pooled features.
    Every BN has the true statistics of its layer's output on the training set and is
    an identity given them, as a trained network's running statistics look.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper as nh
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=360, random_state=SEED, stratify=d.target)

    # conv filters: principal components of 3x3 training patches
    pt = _patches3x3(xtr).reshape(-1, 9).astype(np.float64)
    pmean = pt.mean(axis=0)
    _, _, vt = np.linalg.svd(pt - pmean, full_matrices=False)
    comps = vt[:8]
    w = np.concatenate([comps, -comps]).astype(np.float32)  # [16, 9]
    b = (-(w @ pmean)).astype(np.float32)

    def conv_out(xs):  # [N,16,8,8]
        return np.einsum("nhwk,ck->nchw", _patches3x3(xs).astype(np.float32), w) + b[None, :, None, None]

    def features(xs):
        c = np.maximum(conv_out(xs), 0)
        return c.reshape(len(xs), 16, 4, 2, 4, 2).max(axis=(3, 5)).reshape(len(xs), -1)

    ftr = features(xtr)
    mlp = MLPClassifier(hidden_layer_sizes=(64, 32), activation="relu", max_iter=200, alpha=1e-3,
                        random_state=SEED)
    with threadpool_limits(1), warnings.catch_warnings():  # one BLAS thread: fast and reproducible
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(ftr, ytr)

    # true statistics of each layer's pre-activation output on the training set
    c_tr = conv_out(xtr)
    h1 = ftr @ mlp.coefs_[0] + mlp.intercepts_[0]
    h2 = np.maximum(h1, 0) @ mlp.coefs_[1] + mlp.intercepts_[1]

    inits = [nh.from_array(w.reshape(16, 1, 3, 3), "conv.w"), nh.from_array(b, "conv.b")]
    bn0, bn0_names = _bn_identity("bn0", c_tr, (0, 2, 3))
    bn1, bn1_names = _bn_identity("bn1", h1, (0,))
    bn2, bn2_names = _bn_identity("bn2", h2, (0,))
    inits += bn0 + bn1 + bn2
    for i, (W, B) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        inits += [nh.from_array(W.astype(np.float32), f"fc{i}.w"), nh.from_array(B.astype(np.float32), f"fc{i}.b")]
    nodes = [
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c0"], name="conv", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c0"] + bn0_names, ["n0"], name="bn0"),
        helper.make_node("Relu", ["n0"], ["r0"], name="relu0"),
        helper.make_node("MaxPool", ["r0"], ["p0"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p0"], ["f0"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f0", "fc0.w", "fc0.b"], ["g1"], name="fc0"),
        helper.make_node("BatchNormalization", ["g1"] + bn1_names, ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Gemm", ["r1", "fc1.w", "fc1.b"], ["g2"], name="fc1"),
        helper.make_node("BatchNormalization", ["g2"] + bn2_names, ["n2"], name="bn2"),
        helper.make_node("Relu", ["n2"], ["r2"], name="relu2"),
        helper.make_node("Gemm", ["r2", "fc2.w", "fc2.b"], ["logits"], name="fc2"),
        helper.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(nodes, "digits_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 10])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="qcc-tests")
    model.ir_version = 8  # onnxruntime reads <= 13
    onnx.checker.check_model(model)
    return Digits(model, xtr[:, None], ytr, xte[:, None], yte)


# --- PP-OCR cls: text-line crops ----------------------------------------------------------

CLS_SHAPE = (3, 48, 192)


def cls_preprocess(img: np.ndarray) -> np.ndarray:
    """PaddleOCR's cls preprocessing: resize to 48 high keeping the aspect ratio (at most
    192 wide), scale to [-1, 1], pad with zeros on the right to 192. img: HxW or HxWx3 uint8."""
    import cv2

    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    c, H, W = CLS_SHAPE
    h, w = img.shape[:2]
    rw = min(W, int(math.ceil(H * w / h)))
    r = cv2.resize(img, (rw, H)).astype(np.float32)
    r = (r.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    out = np.zeros(CLS_SHAPE, np.float32)
    out[:, :, :rw] = r
    return out


def _line_rows(gray: np.ndarray, min_h: int = 8) -> List[Tuple[int, int]]:
    """Bands of rows holding ink (text lines): pixels much darker than the local paper
    brightness, counted per row."""
    from scipy import ndimage

    g = gray.astype(np.float64)
    paper = ndimage.maximum_filter(ndimage.uniform_filter(g, 15), 15)
    on = (g < 0.75 * paper).mean(axis=1) > 0.04
    bands, start = [], None
    for i, v in enumerate(list(on) + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            if i - start >= min_h:
                bands.append((start, i))
            start = None
    return bands


# data.text() is handwriting on paper photographed at a slant: turned 13 degrees it is
# level, with three lines of formulas in these row bands
TEXT_DESKEW_DEG = 13.0
TEXT_LINES = ((0, 34), (38, 82), (95, 145))


def text_line_sources() -> List[Tuple[str, np.ndarray, int, int]]:
    """(name, grayscale image, top row, bottom row) of every text line in scikit-image's
    sample images: the printed lines of data.page() and the handwritten ones of data.text()."""
    from skimage import data, transform

    page = data.page()
    out = [(f"page:{top}", page, top, bot) for top, bot in _line_rows(page)]
    text = transform.rotate(data.text(), TEXT_DESKEW_DEG, mode="edge", preserve_range=True).astype(np.uint8)
    out += [(f"text:{top}", text, top, bot) for top, bot in TEXT_LINES]
    return out


def random_line_crop(rng, sources, max_aspect: int, margin: int = 0):
    """(source name, crop): a random piece of a random text line of `sources`
    (text_line_sources), up to `margin` rows of paper above and below, 2 to `max_aspect`
    times as wide as high; the crop is None when it is blank paper."""
    name, img, top, bot = sources[int(rng.integers(len(sources)))]
    H, W = img.shape
    if margin:
        top, bot = max(0, top - int(rng.integers(0, margin))), min(H, bot + int(rng.integers(0, margin)))
    h = bot - top
    w = int(rng.integers(max(2 * h, 24), min(W, max_aspect * h) + 1))
    x0 = int(rng.integers(0, W - w + 1))
    crop = img[top:bot, x0:x0 + w]
    return name, (None if crop.std() < 20 else crop)


def text_line_crops(n: int = 240, seed: int = SEED) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """`n` cls inputs [n, 3, 48, 192]: crops of real text lines (text_line_sources) at random
    horizontal positions and widths, with random margins and at 1, 3/4 or 1/2 of the
    original resolution; odd-numbered crops are turned 180 degrees.
    Returns (inputs, labels, source names), label 1 for the turned crops."""
    import cv2

    rng = np.random.default_rng(seed)
    sources = text_line_sources()
    crops, labels, names = [], [], []
    while len(crops) < n:
        name, crop = random_line_crop(rng, sources, 12, margin=6)
        if crop is None:  # blank paper
            continue
        h, w = crop.shape
        crop = np.ascontiguousarray(crop)
        f = (1.0, 0.75, 0.5)[int(rng.integers(3))]
        if f != 1.0:
            crop = cv2.resize(crop, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        k = len(crops) % 2
        if k:
            crop = crop[::-1, ::-1]
        crops.append(cls_preprocess(np.ascontiguousarray(crop)))
        labels.append(k)
        names.append(name)
    return np.stack(crops), np.array(labels), names
