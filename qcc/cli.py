"""The `qcc` command.

Exit codes (build systems rely on them):
  0  success
  1  compile, input or run error: one line on stderr saying what and where
  2  usage error (bad flags), from argparse
  3  internal error: a bug in qcc (set QCC_DEBUG=1 for the traceback)
  130 interrupted (Ctrl-C)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from . import __version__

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class UsageError(Exception):
    pass


def _parse_shape_arg(text: str) -> List[Tuple[str, Tuple[int, ...]]]:
    """`name=1x3x224x224` -> [("name", (1, 3, 224, 224))]; `a=1x8,b=1x8` names several."""
    parts = text.split(",")
    if len(parts) > 1 and all("=" in p for p in parts):
        return [pair for p in parts for pair in _parse_shape_arg(p)]
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"'{text}': expected NAME=DIMS like data=1x3x224x224")
    name, dims = text.rsplit("=", 1)
    try:
        shape = tuple(int(d) for d in dims.lower().split("x")) if dims else ()
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': dims must be integers separated by 'x'") from None
    if any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"'{text}': dims must be positive")
    return [(name, shape)]


def _int_at_least(low: int, what: str):
    """An argparse type: an integer >= `low`, else a one-line error naming what was expected."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = low - 1
        if n < low:
            raise argparse.ArgumentTypeError(f"'{text}': expected {what}")
        return n
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonnegative_int = _int_at_least(0, "an integer >= 0")


def _parse_emit(text: str) -> Tuple[str, ...]:
    from .targets.cuda_emit import EmitError, parse_kinds

    try:
        return tuple(parse_kinds(text))
    except EmitError as e:
        raise argparse.ArgumentTypeError(str(e).replace("--emit: ", "")) from None


def _instruments(args) -> list:
    from .pass_manager import DumpDir, PrintIRAfter, TimePasses

    out = []
    if getattr(args, "print_ir_after_all", False):
        out.append(PrintIRAfter(None, sys.stderr))
    elif getattr(args, "print_ir_after", None):
        out.append(PrintIRAfter([n.strip() for n in args.print_ir_after.split(",")], sys.stderr))
    if getattr(args, "dump_dir", None):
        out.append(DumpDir(Path(args.dump_dir)))
    if getattr(args, "time_passes", False):
        out.append(TimePasses(sys.stderr))
    return out


def _add_pipeline_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pipeline")
    lv = g.add_mutually_exclusive_group()
    for lvl in ("0", "1", "2", "3"):
        lv.add_argument(f"-O{lvl}", dest="opt_level", action="store_const", const=f"O{lvl}",
                        help=argparse.SUPPRESS)
    lv.add_argument("--passes", metavar="PIPELINE",
                    help="run exactly these passes, e.g. 'canonicalize,fuse{max-iters=4}' ('' = none)")
    g.add_argument("--print-pipeline", action="store_true", help="print the pipeline text this run uses")
    g.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="load user passes from a Python file (repeatable)")
    g.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass (stderr)")
    g.add_argument("--print-ir-after", metavar="PASS[,PASS]", help="print the IR after these passes (stderr)")
    g.add_argument("--time-passes", action="store_true", help="print the time each pass took (stderr)")
    g.add_argument("--dump-dir", metavar="DIR", help="write the IR after each pass to DIR/NNN-pass.qir")
    g.add_argument("--verify-each", action=argparse.BooleanOptionalAction, default=None,
                   help="verify the IR after every pass (default: on for opt, off for compile)")
    g.add_argument("--stop-after", metavar="PASS", help="stop the pipeline after this pass")


def _pipeline(args, default_level: str) -> str:
    from .pipelines import pipeline_for

    if args.passes is not None:
        return args.passes
    return pipeline_for(args.opt_level or default_level)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qcc", description="qcc: a quantizing compiler for neural networks "
                                "(ONNX in; integer code for x86, ARM and CUDA out, via Apache TVM).",
                                epilog="exit codes: 0 ok, 1 compile/input error, 2 usage error, 3 internal error")
    p.add_argument("--version", action="version", version=f"qcc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("compile", help="compile an ONNX model into an artifact folder")
    c.add_argument("model", help="the float model (.onnx)")
    c.add_argument("-o", "--output", required=True, metavar="OUT", help="artifact folder to write")
    c.add_argument("--target", default="host", help="target preset (see `qcc targets`); default host")
    c.add_argument("--input-shape", action="append", default=[], type=_parse_shape_arg, metavar="NAME=DIMS",
                   help="fix an input's dynamic dims, e.g. x=1x3x224x224 (repeatable, or a=1x8,b=1x8)")
    c.add_argument("--calib", metavar="DATA", help="calibration data: .npz with one array per input, or a folder")
    c.add_argument("--calib-method", choices=["minmax", "percentile", "entropy", "mse"],
                   help="how activation ranges are chosen from calibration data (default mse)")
    c.add_argument("--precision", default="", metavar="RULES",
                   help="per-layer precision overrides by name glob or op:TYPE, e.g. "
                        "'conv_12=int16;*.head.*=float;op:matmul=w4' (float, int8, int4/w4, int16/a16, "
                        "w16, w4a16, ...; later rules win)")
    c.add_argument("--max-error", metavar="BUDGET",
                   help="error budget at the outputs: minimum SQNR like 30dB (default), or a relative "
                        "error like 0.01; sensitive layers stay in float until it is met")
    c.add_argument("--min-int8-fraction", type=float, metavar="F",
                   help="never keep so many layers in float that the share of int8 MACs drops below F")
    c.add_argument("--size-budget", metavar="SIZE",
                   help="weights budget like 2MB, 512kB or bytes: the least sensitive layers get 4-bit "
                        "weights (packed two per byte) until the model fits")
    c.add_argument("--config", metavar="FILE",
                   help="a qcc.toml with [precision], [budget] and [calib] settings (flags win)")
    c.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    c.add_argument("--verbose", "-v", action="store_true",
                   help="print progress even when stderr is not a terminal (it is shown on terminals)")
    c.add_argument("--json", action="store_true", help="print the report summary as JSON on stdout")
    c.add_argument("--depfile", metavar="FILE",
                   help="write a Make/Ninja depfile: OUT/manifest.json depends on the model, calibration "
                        "data, plugins and config files")
    c.add_argument("--emit", type=_parse_emit, default=(), metavar="cuda,ptx",
                   help="also write the device code into OUT (cuda targets): cuda = kernels.cu, "
                        "ptx = kernels.ptx (needs nvcc on PATH)")
    c.add_argument("--threads", type=_positive_int, metavar="N",
                   help="CPU threads the artifact runs with by default (recorded in manifest.json; "
                        "`qcc run`/`qcc bench`/qcc.load use it unless told otherwise); default every core")
    c.add_argument("--tune-budget", metavar="N|TIME",
                   help="kernel tuning (on by default at -O3, budget 64): trials for the whole model (64) or "
                        "a time (10m, 90s); 0 = only apply the tuning database")
    c.add_argument("--tune-db", metavar="DIR",
                   help="tuning database folder (default $QCC_CACHE_DIR/tune-db, else ~/.cache/qcc/tune-db)")
    _add_pipeline_flags(c)

    i = sub.add_parser("import", help="import an ONNX model to .qir text")
    i.add_argument("model")
    i.add_argument("-o", "--output", metavar="OUT.qir", help="write here (+ OUT.npz for weights); default stdout")
    i.add_argument("--input-shape", action="append", default=[], type=_parse_shape_arg, metavar="NAME=DIMS")

    o = sub.add_parser("opt", help="run passes on .qir text, like mlir-opt")
    o.add_argument("input", help=".qir file ('-' for stdin)")
    o.add_argument("-o", "--output", metavar="OUT.qir", help="write here (+ OUT.npz); default stdout")
    _add_pipeline_flags(o)

    r = sub.add_parser("run", help="run a compiled artifact on inputs")
    r.add_argument("artifact", help="artifact folder written by `qcc compile`")
    r.add_argument("--input", required=True, metavar="IN.npz", help="one array per model input, by name")
    r.add_argument("-o", "--output", metavar="OUT.npz", help="write the outputs here (default: print a summary)")
    r.add_argument("--threads", type=_positive_int, metavar="N",
                   help="CPU threads (default: the artifact's `compile --threads`, else every core)")

    b = sub.add_parser("bench", help="latency percentiles, throughput, peak memory of an artifact",
                       description="Time an artifact: latency percentiles, throughput and the peak memory "
                                   "of loading and running it. Host artifacts run here; ARM artifacts on "
                                   "another machine run under qemu (emulated: not device timing); --rpc "
                                   "runs on a board through TVM's RPC tracker.")
    b.add_argument("artifact", help="artifact folder written by `qcc compile`")
    b.add_argument("--inputs", metavar="IN.npz", help="one array per model input (default: random inputs "
                                                       "of the artifact's signature)")
    b.add_argument("--warmup", type=_nonnegative_int, default=10, metavar="N", help="untimed runs first (10)")
    b.add_argument("--repeat", type=_positive_int, default=100, metavar="N", help="timed runs (100)")
    b.add_argument("--threads", type=_positive_int, metavar="N",
                   help="CPU threads (default: the artifact's `compile --threads`, else every core)")
    b.add_argument("--rpc", metavar="HOST:PORT", help="run on a board through the TVM RPC tracker at HOST:PORT")
    b.add_argument("--rpc-key", metavar="KEY", help="the device key the board registered with the tracker")
    b.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    b.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors (the exit code says it ran)")
    b.add_argument("--verbose", "-v", action="store_true",
                   help="print progress even when stderr is not a terminal (it is shown on terminals)")

    e = sub.add_parser("eval", help="compare an artifact with the float model (onnxruntime) on data")
    e.add_argument("model", help="the float model (.onnx) the artifact was compiled from")
    e.add_argument("artifact", help="artifact folder written by `qcc compile`")
    e.add_argument("--data", required=True, metavar="DATA", help=".npz (or folder) with one array per input")
    e.add_argument("--per-layer", action="store_true", help="also each quantized layer's SQNR against float")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")

    ps = sub.add_parser("passes", help="list every registered pass with its summary and origin")
    ps.add_argument("--plugin", action="append", default=[], metavar="FILE.py")
    ps.add_argument("--json", action="store_true")

    t = sub.add_parser("targets", help="list target presets")
    t.add_argument("--json", action="store_true")
    return p


# --- commands ---------------------------------------------------------------------------

def cmd_passes(args) -> int:
    from .passes_registry import load_plugin, registered_passes

    for f in args.plugin:
        load_plugin(f)
    passes = registered_passes()
    if args.json:
        print(json.dumps([{"name": i.name, "summary": i.summary, "origin": i.origin,
                           "requires": sorted(i.cls.requires), "produces": sorted(i.cls.produces)}
                          for i in passes.values()], indent=2))
        return EXIT_OK
    width = max((len(n) for n in passes), default=10)
    for info in passes.values():
        print(f"{info.name:<{width}}  {info.summary}  [{info.origin}]")
    return EXIT_OK


def cmd_targets(args) -> int:
    from . import targets

    presets = targets.list_targets()
    if args.json:
        print(json.dumps([{"name": t.name, "family": t.family, "tvm_target": t.target_dict(),
                           "capabilities": sorted(t.capabilities), "description": t.description}
                          for t in presets], indent=2, sort_keys=True))
        return EXIT_OK
    width = max(len(t.name) for t in presets)
    for t in presets:
        caps = ",".join(sorted(t.capabilities)) or "-"
        print(f"{t.name:<{width}}  {t.family:<4}  {caps:<24}  {t.description}")
    return EXIT_OK


def _input_shapes(args) -> Dict[str, Tuple[int, ...]]:
    shapes = {}
    for name, shape in (pair for arg in args.input_shape for pair in arg):
        if name in shapes:
            raise UsageError(f"--input-shape {name} given twice")
        shapes[name] = shape
    return shapes


def cmd_import(args) -> int:
    from .frontend import import_onnx
    from .ir.printer import print_graph, save

    import warnings

    with warnings.catch_warnings(record=True) as said:  # the frontend's notes, in qcc's own form
        warnings.simplefilter("always", UserWarning)
        g = import_onnx(args.model, _input_shapes(args))
    for w in said:
        print(f"qcc: warning: {w.message}", file=sys.stderr)
    if args.output:
        save(g, args.output)
    else:
        sys.stdout.write(print_graph(g, inline_all=True))
    return EXIT_OK


def cmd_opt(args) -> int:
    from .ir.parser import load, parse
    from .ir.printer import print_graph, save
    from .pass_manager import PassManager
    from .passes_registry import load_plugin

    for f in args.plugin:
        load_plugin(f)
    pm = PassManager(_pipeline(args, "O0") if (args.passes is not None or args.opt_level) else "",
                     verify_each=True if args.verify_each is None else args.verify_each,
                     instruments=_instruments(args), stop_after=args.stop_after)
    if args.print_pipeline:
        print(pm.pipeline, file=sys.stderr)
    g = parse(sys.stdin.read(), "<stdin>") if args.input == "-" else load(args.input)
    pm.run(g)
    if args.output:
        save(g, args.output)
    else:
        sys.stdout.write(print_graph(g, inline_all=args.input == "-"))
    return EXIT_OK


def cmd_compile(args) -> int:
    from .driver import CompileOptions, compile_model

    opts = CompileOptions(target=args.target, opt_level=args.opt_level or "O0",
                          passes=args.passes, input_shapes=_input_shapes(args), calib=args.calib,
                          calib_method=args.calib_method, precision=args.precision,
                          max_error=args.max_error, min_int8_fraction=args.min_int8_fraction,
                          size_budget=args.size_budget, config=args.config,
                          plugins=args.plugin, verify_each=bool(args.verify_each),
                          emit=args.emit, depfile=args.depfile, threads=args.threads,
                          tune_budget=args.tune_budget, tune_db=args.tune_db)
    if args.emit:  # fail before the pipeline runs, not after
        from . import targets
        from .driver import CompileError

        try:
            preset = targets.get_target(args.target)
        except ValueError:
            preset = None  # compile_model says so
        if preset is not None and preset.family != "cuda":
            raise CompileError(f"--emit {','.join(args.emit)} needs a cuda target, not {preset.name}")
    log = None if args.quiet or args.json or not (args.verbose or sys.stderr.isatty()) else _Log(sys.stderr)
    report = compile_model(args.model, args.output, opts, instruments=_instruments(args), log=log)
    if args.print_pipeline:  # after the run: at -O3 it is the recipe that won (report.json "recipes")
        print(report["pipeline"], file=sys.stderr)
    if args.json:
        print(json.dumps({"output": args.output, **report["summary"], "warnings": report["warnings"]},
                         sort_keys=True))
    elif not args.quiet:
        _print_summary(report, args.output)
    return EXIT_OK


class _Log:
    """Progress on stderr: `step k/N` lines overwrite each other on a terminal and are
    thinned to quarters in a log file; everything else is one line each."""

    def __init__(self, stream):
        self.stream = stream
        self.tty = stream.isatty()
        self.open_line = False

    def __call__(self, msg: str) -> None:
        import re

        m = re.search(r"(\d+)/(\d+)", msg)
        if m and ":" in msg:
            k, n = int(m.group(1)), int(m.group(2))
            if self.tty:
                self.stream.write(f"\rqcc: {msg}\033[K" + ("\n" if k == n else ""))
                self.stream.flush()
                self.open_line = k != n
                return
            if k != n and k % max(1, n // 4):
                return
        if self.open_line:
            self.stream.write("\n")
            self.open_line = False
        print(f"qcc: {msg}", file=self.stream)


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _print_summary(report: Dict, out: str) -> None:
    s = report["summary"]
    for w in report.get("warnings", []):
        print(f"qcc: warning: {w}", file=sys.stderr)
    print(f"wrote {out}/  ({s['nodes']} nodes, {s['macs'] / 1e6:.1f} M MACs, "
          f"int8 MACs {100 * s['int8_mac_fraction']:.0f}%, weights {_size(s['size_bytes_float'])} -> "
          f"{_size(s['size_bytes_quantized'])})")
    from .report import summary_table

    if report["layers"]:
        print(summary_table(report))
    for name, grid in report.get("input_grid", {}).items():
        into = f", shifted {grid['shift']:+.3g} into {', '.join(grid['into_bias_of'])}'s bias" if grid["shift"] else ""
        print(f"  input {name}: 8-bit data, quantized on its own grid (step {grid['step']:.4g}{into})")
    a16 = report.get("a16_share")
    if a16 and a16["raised"]:
        pred, n = a16["predicted_output_sqnr_db"], len(a16["raised"])
        after = "no noise" if pred["after"] is None else f"{pred['after']:.1f} dB"
        print(f"  16-bit activations for the {n} layer{'s' * (n > 1)} noisiest per MAC "
              f"({100 * a16['share']:.1f}% of the MACs; the layers' own noise added up predicts "
              f"{pred['before']:.1f} dB -> {after} at the output"
              + (f"; {len(a16['measured_worse'])} more made the whole model noisier and stay 8-bit"
                 if a16.get("measured_worse") else "") + "; report.json \"a16_share\")")
    if s.get("output_sqnr_db"):
        eb = report.get("error_batches")
        where = (f" (calibration batches {eb['first']}-{eb['last']} of {eb['of']}"
                 f"{', unseen by the bit-width search' if eb['unseen_by_bitwidth_search'] else ''})") if eb else ""
        print("  output SQNR vs float: " + ", ".join(f"{k} {v:.1f} dB" for k, v in s["output_sqnr_db"].items())
              + where)
    if report.get("recipes"):
        r = report["recipes"]
        held = ", ".join(f"{c['held_out_output_sqnr_db']} dB" for c in r["candidates"])
        print(f"  recipe {r['chosen'] + 1} of {len(r['candidates'])} kept (held-out output SQNR {held}; "
              f"report.json \"recipes\")")
    if report.get("opaque_ops"):
        print(f"  ops kept as opaque float ops: {', '.join(report['opaque_ops'])}")


def cmd_run(args) -> int:
    import numpy as np

    from .artifact import load

    # an ARM artifact on another machine runs under qemu-aarch64 with the preset's core; the first
    # such run prepares an aarch64 runtime in the cache (about a minute), with progress on stderr
    mod = load(args.artifact, threads=args.threads, log=lambda m: print(f"qcc: {m}", file=sys.stderr, flush=True))
    try:
        with np.load(args.input, allow_pickle=False) as z:
            feeds = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise UsageError(f"{args.input}: cannot read inputs ({e})") from None
    cpu = getattr(mod._runner, "cpu", None)
    if cpu and sys.stderr.isatty():
        print(f"qcc: running under qemu-aarch64 -cpu {cpu}", file=sys.stderr)
    outs = mod.run(feeds)
    if args.output:
        from .ir.printer import write_npz

        write_npz(args.output, outs)
    else:
        for k, v in outs.items():
            print(f"{k}: {v.dtype}{list(v.shape)} min {v.min():.6g} max {v.max():.6g} mean {v.mean():.6g}")
    return EXIT_OK


def cmd_bench(args) -> int:
    from .bench import bench, format_result

    log = None if args.quiet or args.json or not (args.verbose or sys.stderr.isatty()) else _Log(sys.stderr)
    progress = (lambda k, n: log(f"timing: {k}/{n} runs")) if log else None
    result = bench(args.artifact, inputs=args.inputs, warmup=args.warmup, repeat=args.repeat,
                   threads=args.threads, rpc=args.rpc, rpc_key=args.rpc_key, progress=progress,
                   log=lambda m: print(f"qcc: {m}", file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    elif not args.quiet:
        print(format_result(result))
    return EXIT_OK


def cmd_eval(args) -> int:
    from .evaluate import evaluate, format_table

    result = evaluate(args.model, args.artifact, args.data, per_layer=args.per_layer)
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else format_table(result))
    return EXIT_OK


COMMANDS = {"bench": cmd_bench, "eval": cmd_eval, "compile": cmd_compile, "import": cmd_import, "opt": cmd_opt,
            "run": cmd_run, "passes": cmd_passes, "targets": cmd_targets}


def _known_errors():
    from .artifact import ArtifactError
    from .calibrate import CalibError
    from .driver import CompileError
    from .frontend.errors import FrontendError
    from .ir.parser import QirError
    from .pass_manager import PassFailure
    from .passes_registry import PassError

    return (UsageError, ArtifactError, CompileError, FrontendError, QirError, PassFailure, PassError, CalibError)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("qcc: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place errors become exit codes
        if os.environ.get("QCC_DEBUG"):
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, _known_errors()):
            # positioned errors (file:line:col: error: ...) already read like a compiler's
            print(msg if ": error: " in msg else f"qcc: error: {msg}", file=sys.stderr)
            return EXIT_ERROR
        if isinstance(e, (OSError, ValueError)):
            print(f"qcc: error: {msg}", file=sys.stderr)
            return EXIT_ERROR
        print(f"qcc: internal error: {type(e).__name__}: {msg} (set QCC_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
