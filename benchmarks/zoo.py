"""Beyond the OCR models: `python benchmarks/zoo.py [--models resnet18,convnext_tiny,...]`.

qcc is judged on models nobody here has seen. This exports torchvision's classifiers (and a
small ViT-style transformer encoder) to ONNX and, per model, in one process:

  - compiles it with the qcc CLI at -O0 (float) and -O2 (calibrated on 16 crops);
  - compares each build's output with onnxruntime float on 16 other crops: SQNR in dB and
    top-1 agreement, and the same for onnxruntime's quantize_static (QDQ, per-channel);
  - times qcc int8, qcc float, onnxruntime float and int8 interleaved, same thread count.

It needs torch and torchvision, which qcc does not depend on: install them in a separate
virtualenv and point `--torch-python` at its interpreter (the export runs there; everything
else runs here). There are no pretrained weights offline: the models are randomly initialised
and their batch-norm statistics re-estimated on real images (scikit-image's bundled photos),
so activations look like a trained network's in scale, not in content. The accuracy figures
compare tools on the same models, they say nothing about ImageNet accuracy.
"""
from __future__ import annotations

import argparse
import json
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

MODELS = ("transformer,squeezenet1_1,resnet18,mobilenet_v3_small,mobilenet_v2,efficientnet_b0,"
          "shufflenet_v2_x1_0,regnet_x_400mf,googlenet,densenet121,mnasnet0_5,convnext_tiny")

_EXPORT = r'''
import sys, numpy as np, torch, torchvision
torch.manual_seed(0)
out_dir, names = sys.argv[1], sys.argv[2].split(",")
x = torch.from_numpy(np.load(out_dir + "/bn.npy"))
class Encoder(torch.nn.Module):  # a ViT-style encoder: patch conv, 2 layers, mean-pool head
    def __init__(s):
        super().__init__()
        s.emb = torch.nn.Conv2d(3, 128, 16, 16)
        layer = torch.nn.TransformerEncoderLayer(128, 4, 256, batch_first=True, dropout=0.0)
        s.enc = torch.nn.TransformerEncoder(layer, 2)
        s.head = torch.nn.Linear(128, 10)
    def forward(s, x):
        return s.head(s.enc(s.emb(x).flatten(2).transpose(1, 2)).mean(1))
for name in names:
    m = Encoder() if name == "transformer" else getattr(torchvision.models, name)(weights=None)
    for mod in m.modules():  # re-estimate batch-norm statistics on real images
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats(); mod.momentum = None
    m.train()
    with torch.no_grad():
        for i in range(0, len(x), 16):
            m(x[i:i + 16])
    m.eval()
    torch.onnx.export(m, x[:1], f"{out_dir}/{name}.onnx", input_names=["input"], output_names=["output"],
                      opset_version=17, dynamo=False)
    print("exported", name, flush=True)
'''


def crops(n: int, size: int, seed: int) -> np.ndarray:
    """n random square crops of scikit-image's colour photos, resized, ImageNet-normalised, NCHW."""
    from skimage import data, transform

    imgs = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry",
                 "hubble_deep_field", "retina", "colorwheel", "logo", "page"):
        a = getattr(data, name)()
        a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
        imgs.append(a)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = imgs[i % len(imgs)]
        h, w = a.shape[:2]
        s = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        c = transform.resize(a[y:y + s, x:x + s], (size, size), anti_aliasing=True).astype(np.float32)
        c = c / 255.0 if c.max() > 1.5 else c
        c = (c - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
        out.append(c.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def sqnr(ref: np.ndarray, y: np.ndarray) -> float:
    return float(10 * np.log10((ref ** 2).sum() / max(float(((ref - y) ** 2).sum()), 1e-30)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--torch-python", default=sys.executable,
                    help="a Python with torch and torchvision, for the export")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--work", help="folder for the exported models and builds (default: a temporary one)")
    args = ap.parse_args(argv)

    import logging

    import qcc
    from models import ort_quantize_static

    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's per-initializer warnings
    work = Path(args.work or tempfile.mkdtemp(prefix="qcc-zoo-"))
    work.mkdir(parents=True, exist_ok=True)
    names = args.models.split(",")
    np.save(work / "bn.npy", crops(64, 224, 1))
    calib, test = crops(16, 224, 2), crops(16, 224, 3)
    np.savez(work / "calib.npz", input=calib)
    missing = [n for n in names if not (work / f"{n}.onnx").exists()]
    if missing:
        subprocess.run([args.torch_python, "-c", _EXPORT, str(work), ",".join(missing)], check=True)

    print(f"{'model':<20} {'build':<8} {'compile':>8} {'SQNR dB':>8} {'top-1':>6} {'int8 MACs':>9}")
    timings = {}
    for name in names:
        path = work / f"{name}.onnx"
        sess = _session(path, args.threads)
        ref = np.concatenate([sess.run(None, {"input": x[None]})[0] for x in test])
        runs = {"ort f32": lambda s=sess: s.run(None, {"input": test[:1]})}
        for level in ("O0", "O2"):
            out = work / f"{name}_{level}"
            dt, failed = cli_build(path, out, level, *(["--calib", str(work / "calib.npz")] if level == "O2" else []))
            if failed:
                print(f"{name:<20} qcc -{level} failed ({failed})")
                continue
            m = qcc.load(out, threads=args.threads)
            y = np.concatenate([m.run({"input": x[None]})["output"] for x in test])
            frac = json.loads((out / "report.json").read_text())["summary"].get("int8_mac_fraction", 0.0)
            top1 = float((y.argmax(1) == ref.argmax(1)).mean())
            print(f"{name:<20} qcc -{level:<3} {dt:7.1f}s {sqnr(ref, y):8.2f} {100 * top1:5.1f}% {frac:9.2f}")
            runs[f"qcc {'int8' if level == 'O2' else 'f32'}"] = lambda m=m: m.run({"input": test[:1]})
        qpath = ort_quantize_static(path, work / f"{name}_ortq.onnx", "input", [x[None] for x in calib])
        qs = _session(qpath, args.threads)
        y = np.concatenate([qs.run(None, {"input": x[None]})[0] for x in test])
        print(f"{name:<20} {'ort int8':<8} {'':>8} {sqnr(ref, y):8.2f} {100 * float((y.argmax(1) == ref.argmax(1)).mean()):5.1f}%")
        runs["ort int8"] = lambda s=qs: s.run(None, {"input": test[:1]})
        for f in runs.values():
            f()
        # single runs and warm bursts, interleaved (run.py's measure: a lone inference and a
        # serving loop's steady state differ ~2x on these machines)
        timings[name] = interleaved_medians(runs, args.rounds)
        timings[name + " warm"] = interleaved_medians(runs, args.rounds, burst=3)
        sys.stdout.flush()

    print(f"\nthreads {args.threads}, {args.rounds} interleaved rounds, medians in ms; 'warm': each round "
          "runs each contender 4 times back to back and keeps the median of the last 3")
    print_speed_table(timings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
