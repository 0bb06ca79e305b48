"""`qcc eval`: the compiled artifact next to the float model (onnxruntime), on the user's data.

Per output it prints SQNR, max abs error, cosine similarity and argmax agreement
(over the last axis, the class axis of classifiers and the vocabulary axis of
recognisers); `--per-layer` adds each quantized layer's SQNR against float,
measured with the reference interpreter on the same data.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np

from .ir.graph import Graph
from .ir.types import TensorType


def _samples_for(manifest: Dict, data) -> List[Dict[str, np.ndarray]]:
    from .calibrate import load_samples

    g = Graph()
    for spec in manifest["inputs"]:
        g.add_input(spec["name"], TensorType(tuple(spec["shape"]), spec["dtype"]))
    return load_samples(data, g)


def output_metrics(ref: np.ndarray, got: np.ndarray) -> Dict[str, float]:
    r, o = ref.astype(np.float64), got.astype(np.float64)
    noise = float(np.mean((r - o) ** 2))
    sig = float(np.mean(r ** 2))
    cos = float(np.dot(r.ravel(), o.ravel()) / (np.linalg.norm(r) * np.linalg.norm(o) or 1e-30))
    m = {"sqnr_db": round(10 * np.log10(max(sig, 1e-30) / noise), 2) if noise > 0 else float("inf"),
         "max_abs_error": float(np.abs(r - o).max()) if r.size else 0.0,
         "cosine": round(cos, 6)}
    if r.ndim >= 1 and r.shape[-1] > 1:
        m["argmax_agreement"] = round(float(np.mean(r.argmax(-1) == o.argmax(-1))), 6)
    return m


def evaluate(model, out_dir, data, per_layer: bool = False) -> Dict:
    import onnxruntime

    from .artifact import load

    mod = load(out_dir)
    samples = _samples_for(mod.manifest, data)
    sess = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    refs: Dict[str, List[np.ndarray]] = {}
    gots: Dict[str, List[np.ndarray]] = {}
    names = [o["name"] for o in mod.outputs]
    for feeds in samples:
        ref = sess.run(names, feeds)
        got = mod.run(feeds)
        for n, r in zip(names, ref):
            refs.setdefault(n, []).append(np.asarray(r))
            gots.setdefault(n, []).append(got[n])
    result = {"batches": len(samples),
              "outputs": {n: output_metrics(np.concatenate(refs[n]), np.concatenate(gots[n])) for n in names}}
    if per_layer:
        result["layers"] = _per_layer(model, out_dir, mod.manifest, samples)
    return result


def _per_layer(model, out_dir, manifest, samples) -> Dict[str, float]:
    from .frontend import import_onnx
    from .ir.parser import load as load_qir
    from .pass_manager import PassManager
    from .report import layer_errors

    shapes = {i["name"]: tuple(i["shape"]) for i in manifest["inputs"]}
    ref = import_onnx(model, shapes)
    PassManager("canonicalize,fuse").run(ref)
    quant = load_qir(Path(out_dir) / "model.qir")
    report = json.loads((Path(out_dir) / "report.json").read_text())
    layers = {l["name"]: l for l in report["layers"]
              if (l.get("requantize") or l.get("dequantize")) and l.get("output_value")}
    errs = layer_errors(ref, quant, samples[:8], layers)
    return {k: v for k, v in errs.items() if not k.startswith("output:")}


def format_table(result: Dict) -> str:
    lines = [f"{'output':<24} {'SQNR dB':>8} {'max err':>10} {'cosine':>9} {'argmax':>8}"]
    for n, m in result["outputs"].items():
        am = m.get("argmax_agreement")
        lines.append(f"{n[:24]:<24} {m['sqnr_db']:8.2f} {m['max_abs_error']:10.4g} {m['cosine']:9.6f} "
                     f"{'' if am is None else f'{100 * am:7.2f}%':>8}")
    for n, v in result.get("layers", {}).items():
        lines.append(f"  layer {n[:40]:<40} {v:8.2f} dB")
    return "\n".join(lines)
