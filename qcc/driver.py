"""`qcc.compile`: model in, artifact folder out — the job build systems call.

The artifact is written to a temporary sibling folder and renamed into place
only when everything succeeded, so a failed compile never leaves a half-written
OUT behind. Every file is deterministic (no timestamps, sorted keys): the same
model and options give byte-identical files.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import __version__
from .analysis import weight_bytes
from .ir.graph import Graph
from .ir.printer import save as save_qir
from .pass_manager import Instrument, PassContext, PassManager
from .report import build_report, layer_errors
from .passes_registry import load_plugin
from .pipelines import recipes_for


class CompileError(Exception):
    """A compile that cannot go on; the message is one line."""


@dataclass
class CompileOptions:
    target: str = "host"
    opt_level: str = "O0"
    passes: Optional[str] = None  # exact pipeline; overrides opt_level
    input_shapes: Dict[str, Tuple[int, ...]] = field(default_factory=dict)
    calib: Optional[str] = None
    calib_method: Optional[str] = None
    precision: str = ""
    max_error: Optional[str] = None  # "30dB" or a relative error; None = the pass default
    min_int8_fraction: Optional[float] = None
    size_budget: Optional[str] = None  # "2MB", "512kB" or bytes: weights as the artifact stores them
    config: Optional[str] = None  # a qcc.toml (qcc/config.py); its values fill what flags leave unset
    plugins: Sequence[str] = ()
    verify_each: bool = False
    emit: Sequence[str] = ()  # device code to write beside model.so: "cuda" (kernels.cu), "ptx" (kernels.ptx)
    depfile: Optional[str] = None  # write a Make/Ninja depfile here: OUT/manifest.json: its inputs
    threads: Optional[int] = None  # CPU threads the artifact runs with by default (manifest "execution")
    # kernel tuning (targets/tune.py): trials ("64") or time ("10m"); "0" applies the database only;
    # None: tune.DEFAULT_BUDGET at -O3, no tuning otherwise. tune_db: None = the user cache folder
    tune_budget: Optional[str] = None
    tune_db: Optional[str] = None

    def pipeline(self) -> str:
        """The pipeline text (-O3: its first recipe; see pipelines())."""
        return self.pipelines()[0]

    def pipelines(self) -> Tuple[str, ...]:
        """The pipelines this compile tries: `passes`, or the level's recipes (several at
        -O3, where the driver keeps the most accurate: _choose_recipe)."""
        return (self.passes,) if self.passes is not None else recipes_for(self.opt_level)

    def tuning_budget(self) -> Optional[str]:
        """The tuning budget text of this compile; None = no tuning database at all."""
        if self.tune_budget is not None:
            return self.tune_budget
        if self.passes is None and self.opt_level.upper().lstrip("-") == "O3":
            from .targets.tune import DEFAULT_BUDGET

            return DEFAULT_BUDGET
        return None

    def fingerprint(self) -> Dict:
        """What determines the output, for the manifest's options hash."""
        return {
            "target": self.target,
            "pipeline": " | ".join(self.pipelines()),
            "input_shapes": {k: list(v) for k, v in sorted(self.input_shapes.items())},
            "calib": _sha256(self.calib) if self.calib else None,
            "calib_method": self.calib_method,
            "precision": self.precision,
            "max_error": self.max_error,
            "min_int8_fraction": self.min_int8_fraction,
            "size_budget": self.size_budget,
            "config": _sha256(self.config) if self.config else None,
            "plugins": [_sha256(p) for p in self.plugins],
        }


def with_config(opts: CompileOptions) -> CompileOptions:
    """The options with `opts.config`'s values filled in where no flag set them; its
    precision rules go before the flag's (so the flag's win)."""
    if not opts.config:
        return opts
    from dataclasses import replace

    from .config import ConfigError, load_config

    try:
        cfg = load_config(opts.config)
    except ConfigError as e:
        raise CompileError(str(e)) from None
    rules = ";".join(t for t in (cfg.precision_text(), opts.precision) if t)
    return replace(opts, precision=rules,
                   max_error=opts.max_error if opts.max_error is not None else cfg.max_error,
                   min_int8_fraction=opts.min_int8_fraction if opts.min_int8_fraction is not None
                   else cfg.min_int8_fraction,
                   size_budget=opts.size_budget if opts.size_budget is not None else cfg.size_budget,
                   calib=opts.calib if opts.calib is not None else cfg.calib,
                   calib_method=opts.calib_method if opts.calib_method is not None else cfg.calib_method)


def _sha256(path) -> str:
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _io(values) -> List[Dict]:
    return [{"name": v.name, "shape": list(v.shape), "dtype": v.dtype} for v in values]


class _FloatSnapshot(Instrument):
    """Keeps a copy of the float graph as it is just before observers go in: the
    reference the report measures each quantized layer against."""

    def __init__(self):
        self.graph: Optional[Graph] = None

    def before_pass(self, p, graph, ctx, index):
        if p.name == "insert-observers" and self.graph is None:
            self.graph = graph.copy()


ERROR_SAMPLES = 8  # calibration batches used to measure per-layer error for the report


@dataclass
class _Run:
    """One pipeline run: the graph it made, its context, its text and its measured errors."""
    graph: Graph
    ctx: PassContext
    pipeline: str
    errors: Dict[str, float]
    batch_sqnr: Optional[List[float]] = None  # output_sqnr of each measured batch (per_batch)

    def output_sqnr(self) -> Optional[float]:
        """The worst model output's SQNR against float on the batches it was measured on."""
        return _worst_output(self.errors)


def _worst_output(errors: Dict[str, float]) -> Optional[float]:
    outs = [v for k, v in errors.items() if k.startswith("output:")]
    return min(outs) if outs else None


SIGN_TEST_P = 0.1  # -O3: how unlikely, by chance, a challenger's wins on held-out batches must be


def replaces(challenger: Sequence[Optional[float]], incumbent: Sequence[Optional[float]]) -> bool:
    """Whether a recipe measured `challenger` (output SQNR per held-out batch) should replace
    one measured `incumbent` on the same batches: closer to float on so many of them that a
    coin would do as well less than SIGN_TEST_P of the time (a one-sided sign test; ties
    count against it), and closer on all of them pooled (the caller checks that). With 2 or
    3 held-out batches nothing can pass it: the incumbent stays, because held-out SQNR on so
    few batches chose wrongly (PP-OCR det v4 and v5, 8 images: the mse recipe measured 7.0
    against 5.2 dB and 2.6 against 0.0 dB on their two held-out images, and lost 3 and 3
    points of pooled IoU to -O2's recipe on 12 others). With 4, all must win; with 8, 7."""
    scores = [(-math.inf if c is None else c, -math.inf if i is None else i) for c, i in zip(challenger, incumbent)]
    n, wins = len(scores), sum(c > i for c, i in scores)
    if n == 0:
        return False
    p = sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n
    return p < SIGN_TEST_P


def held_out_split(n: int) -> Tuple[List[int], List[int]]:
    """(fitted, held-out) indices of n >= 2 calibration batches: every fourth batch held out
    (the last one when there are fewer than four), a quarter in all. Spread over the set, not
    its tail, because calibration sets come ordered (files sorted by name or class, text
    pages before photos): PP-OCRv5 det's -O3, given 8 images whose last two were photos,
    measured its recipes on those two alone, where float finds no text and the SQNR of a
    near-empty probability map is noise (2.6 against 0.0 dB), and kept the recipe that
    lost every text pixel of a 6221-pixel image on held-out data."""
    held = list(range(3, n, 4)) if n >= 4 else [n - 1]
    return [i for i in range(n) if i not in held], held


def _choose_recipe(graph: Graph, texts: Sequence[str], run: Callable[..., _Run], samples, float_bytes: int,
                   store: Path, write: bool, say) -> Tuple[_Run, Optional[Dict]]:
    """Run the compile's pipeline; at -O3, choose among its recipes first. Returns (the run
    kept, the report's "recipes" record or None).

    Each recipe is fitted on three quarters of the calibration batches and measured on the
    other quarter, every fourth batch (held_out_split). The first recipe (the level's own) is
    kept unless another's worst output is closer to float there, pooled and batch by batch
    beyond chance (replaces); the one kept runs again on all of them. Held out, because the
    recipes fit the data they see to different degrees: on PP-OCR cls, -O2's recipe
    (smooth, GPTQ before the search) measured 6 dB better than the mse recipe on the
    batches it was fitted to, and the same on 640 crops it had not seen (27.1 dB each).
    With few batches the held-out measure is noisy (PP-OCR det, 16 images: holding out half
    chose the mse recipe, a quarter -O2's, which measured 1.0 dB better on 32 other images).

    The choice is stored in `store`, in the tuning database under the model's and options'
    digest (when `write`: not with --tune-budget 0, which only reads it), so a rebuild runs
    only the recipe that won
    (a rebuild stays within the time of one pipeline, as a warm tuning database promises)
    and writes the same record. With fewer than two calibration batches nothing can be held
    out: the first recipe runs."""
    if len(texts) == 1 or not samples or len(samples) < 2:
        return run(texts[0], graph), None
    try:
        record = json.loads(store.read_text())
        kept = record["candidates"][record["chosen"]]["pipeline"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        record = None
    if record is not None and kept in texts:
        say(f"recipes: the choice stored in {store}")
        return run(kept, graph), record
    fit_idx, held_idx = held_out_split(len(samples))
    fit, held = [samples[i] for i in fit_idx], [samples[i] for i in held_idx]
    candidates = []
    for i, text in enumerate(texts):  # one trial's graph alive at a time (a BEiT's is 350 MB)
        say(f"recipe {i + 1} of {len(texts)}: fitted on {len(fit)} calibration batches, measured on {len(held)}")
        trial = run(text, graph.copy(), fit, held, reference=graph, per_batch=True)
        candidates.append({"pipeline": trial.pipeline, "held_out_output_sqnr_db": trial.output_sqnr(),
                           "held_out_batch_sqnr_db": trial.batch_sqnr,
                           "int8_mac_fraction": build_report(trial.graph, float_bytes, [])["summary"]["int8_mac_fraction"]})
        del trial

    def pooled(i):
        sqnr = candidates[i]["held_out_output_sqnr_db"]
        return float("-inf") if sqnr is None else sqnr

    best = 0  # the level's own recipe, until a challenger beats it (replaces)
    for i in range(1, len(texts)):
        if pooled(i) > pooled(best) and replaces(candidates[i]["held_out_batch_sqnr_db"],
                                                 candidates[best]["held_out_batch_sqnr_db"]):
            best = i
    record = {"candidates": candidates, "chosen": best, "fitted_batches": len(fit), "held_out_batches": len(held),
              "rule": "the first recipe unless another is closer to float (worst output's SQNR) on held-out "
                      f"calibration batches (every fourth), pooled and by a one-sided sign test at p < {SIGN_TEST_P:g}"}
    say(f"recipes: keeping {best + 1} of {len(texts)} (held out: "
        + ", ".join(f"{c['held_out_output_sqnr_db']} dB at {100 * c['int8_mac_fraction']:.1f}% int8" for c in candidates)
        + ")")
    kept = run(texts[best], graph)
    if not write:
        return kept, record
    from .targets.tune import _atomic_write

    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(store, json.dumps(record, indent=1, sort_keys=True) + "\n")
    except OSError as e:  # the build is still right; only a rebuild pays again
        kept.ctx.warn(f"cannot store the recipe choice in {store.parent}: {e.strerror or e}")
    return kept, record


def _dump_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _calib_unused(opts: CompileOptions) -> Optional[str]:
    """A warning when --calib is given to a level that never reads it: `qcc compile m.onnx
    --calib d.npz -o out` builds -O0, a float model, and a user who forgot -O2 would
    otherwise find out only from "int8 MACs 0%"."""
    level = opts.opt_level.upper().lstrip("-")
    if not opts.calib or opts.passes is not None or level not in ("O0", "O1"):
        return None
    does = "builds in float" if level == "O0" else "quantizes only the weights, which needs no data"
    return f"--calib is not used: -{level} {does}; add -O2 to quantize activations from it"


def compile_model(model, out_dir, options: Optional[CompileOptions] = None, *,
                  instruments: Sequence[Instrument] = (), log: Optional[Callable[[str], None]] = None) -> Dict:
    """Import, optimise, lower and write the artifact folder. Returns the report."""
    from .frontend import import_onnx
    from .frontend.errors import FrontendError
    from . import targets

    opts = with_config(options or CompileOptions())
    out_dir = Path(out_dir)
    model = Path(model)
    try:
        preset = targets.get_target(opts.target)
        if opts.threads:  # the schedules' parallel split and tuning plan for the cores it will run on
            preset = preset.with_cores(opts.threads)
    except ValueError as e:
        raise CompileError(str(e)) from None
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir())
                                                      and not (out_dir / "manifest.json").exists())):
        raise CompileError(f"{out_dir} exists and is not a qcc artifact folder; "
                           "refusing to overwrite it")
    if not model.is_file():
        raise CompileError(f"{model}: no such file")
    for p in opts.plugins:
        load_plugin(p)
    texts = [PassManager(t).pipeline for t in opts.pipelines()]  # a typo in --passes fails before the import

    say = log or (lambda m: None)
    budget = {}  # checked before the (slow) import: a typo fails at once
    if opts.max_error is not None:
        from .passes.assign_bitwidths import parse_error_budget

        try:
            budget["min_sqnr"] = parse_error_budget(opts.max_error)
        except ValueError as e:
            raise CompileError(str(e)) from None
    if opts.min_int8_fraction is not None:
        budget["min_int8_fraction"] = opts.min_int8_fraction
    if opts.size_budget is not None:
        from .passes.assign_bitwidths import parse_size

        try:
            budget["size_budget"] = parse_size(opts.size_budget)
        except ValueError as e:
            raise CompileError(f"--size-budget: {e}") from None
    tune_budget = None
    if opts.tuning_budget() is not None:
        from .targets.tune import TuneError, parse_budget

        try:
            tune_budget = parse_budget(opts.tuning_budget())
        except TuneError as e:
            raise CompileError(str(e)) from None
    if opts.precision:
        from .passes.assign_bitwidths import parse_precision

        try:
            parse_precision(opts.precision)
        except ValueError as e:
            raise CompileError(f"--precision: {e}") from None
    say(f"importing {model.name}")
    from .calibrate import by_input, sample_shapes
    from .frontend.onnx_load import at_supported_opset, load_model, model_inputs, resolve_input_shapes

    try:
        # parsed once, for the shapes and the import
        proto, opset_note = at_supported_opset(load_model(model))
        examples = by_input(sample_shapes(opts.calib), [vi.name for vi in model_inputs(proto.graph)]) \
            if opts.calib else None
        chosen, shape_notes = resolve_input_shapes(proto, opts.input_shapes, examples)
        if chosen:  # recorded in the manifest like shapes given on the command line
            opts = dataclasses.replace(opts, input_shapes={**opts.input_shapes, **chosen})
        graph = import_onnx(proto, opts.input_shapes)
    except FrontendError as e:
        raise CompileError(str(e)) from None
    float_bytes = weight_bytes(graph)
    from .calibrate import load_samples

    notes = ([opset_note] if opset_note else []) + list(shape_notes)
    unused = _calib_unused(opts)
    if unused:
        notes.append(unused)
    samples = load_samples(opts.calib, graph, warn=notes.append) if opts.calib else None

    def run(text: str, g: Graph, fit=samples, measure=samples, reference: Optional[Graph] = None,
            per_batch: bool = False) -> _Run:
        ctx = PassContext(options={"calib": fit, "calib_method": opts.calib_method,
                                   "precision": opts.precision, "target": preset, **budget}, log=log)
        for note in notes:
            ctx.warn(note)
        snapshot = _FloatSnapshot()
        pm = PassManager(text, verify_each=opts.verify_each, instruments=[snapshot, *instruments])
        say(f"running {pm.pipeline or '(no passes)'}")
        pm.run(g, ctx)
        errors = {}
        per = [] if per_batch else None  # each batch's output SQNRs, from the same runs
        ref = snapshot.graph if snapshot.graph is not None else reference  # no observers: outputs only
        if measure is fit and measure:
            # the bit-width search chose on its first batches: what it saw flatters its choices
            # (PP-OCR cls, batch 1: 34.0 dB on the 8 first crops, 26.3 dB on 4096 others), so the
            # report measures the batches after them when there are any
            seen = (ctx.report.get("bitwidth_search_batches") or {}).get("measured", 0)
            first = seen if len(measure) > seen else 0
            measure = measure[first:]
            ctx.report["error_batches"] = {"first": first + 1, "last": first + min(len(measure), ERROR_SAMPLES),
                                           "of": len(fit), "unseen_by_bitwidth_search": first > 0}
        if measure and ref is not None:
            say("measuring per-layer error against float")
            errors = layer_errors(ref, g, measure[:ERROR_SAMPLES], ctx.report.get("layers_quantized", {}), per)
        return _Run(g, ctx, pm.pipeline, errors, [_worst_output(b) for b in per] if per else None)

    from .targets.tune import default_db_dir

    model_sha, fingerprint = _sha256(model), opts.fingerprint()
    key = hashlib.sha256(json.dumps({"qcc": __version__, "model": model_sha, "options": fingerprint},
                                    sort_keys=True).encode()).hexdigest()
    store = Path(opts.tune_db or default_db_dir()).expanduser() / "recipes" / f"{key[:32]}.json"
    write = tune_budget is not None and tune_budget.measures  # --tune-budget 0 applies, never writes
    chosen, recipes = _choose_recipe(graph, texts, run, samples, float_bytes, store, write, say)
    graph, ctx, errors = chosen.graph, chosen.ctx, chosen.errors
    opaque = sorted({n.op for n in graph.nodes if n.op.startswith("onnx.")})

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        say(f"compiling for {preset.name} with TVM")
        try:
            strategy, tuner = _tuning(preset, tune_budget, opts, say)
            tiles, tile_report = _tile_search(graph, preset, tuner, opts, say)
            from .targets.x86_int8 import tile_choices

            with tile_choices(tiles):
                lib = targets.build(graph, preset, tmp, strategy=strategy)
        except targets.LoweringError as e:
            raise CompileError(f"cannot lower to {preset.name}: {str(e).splitlines()[0]}") from None
        save_qir(graph, tmp / "model.qir")
        _emit_sources(graph, preset, tmp, opts, ctx.warnings, say)
        report = build_report(graph, float_bytes, opaque, ctx.report, errors)
        report["pipeline"] = chosen.pipeline
        if recipes is not None:
            report["recipes"] = recipes
        if tile_report:
            report["tile_search"] = tile_report
        report["warnings"] = list(ctx.warnings)
        _dump_json(tmp / "report.json", report)
        if report["layers"]:
            from .plot import layers_svg

            (tmp / "layers.svg").write_text(layers_svg(report))
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {
            "qcc_version": __version__,
            "target": {"preset": preset.name, "tvm": preset.target_dict()},
            "library": Path(lib).name,
            "inputs": _io(graph.inputs),
            "outputs": _io(graph.outputs),
            "model_sha256": model_sha,
            "options": fingerprint,
            "options_sha256": hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest(),
            # defaults for `qcc run`/`qcc bench`/qcc.load (null: every core); not in model.so, so not hashed
            "execution": {"threads": opts.threads},
            # -O3: the tuning database this build applied (no timings: they are not deterministic)
            **({"tuning": tuner.stats.manifest(tuner.db)} if tuner is not None else {}),
            "files": {f: _sha256(tmp / f) for f in files},
        }
        _dump_json(tmp / "manifest.json", manifest)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; an artifact is meant to be shared
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if opts.depfile:
        write_depfile(opts.depfile, out_dir, model, opts)
    return report


def _tuning(preset, budget, opts: CompileOptions, say):
    """(strategy, tuner) for targets.build: with a budget, the preset's strategy with the
    tuning pass in its kernel passes (CPU targets); (None, None) otherwise."""
    if budget is None:
        return None, None
    from . import targets
    from .targets.strategy import FusedCPUStrategy
    from .targets.tune import TuningPass

    strategy = targets.strategy_for(preset)
    if not isinstance(strategy, FusedCPUStrategy):
        say(f"tuning: not available for {preset.name}; built with its default schedules")
        return None, None
    tuner = TuningPass(strategy, preset, budget=budget, db_dir=opts.tune_db, log=say)
    strategy.kernel_passes = (*strategy.kernel_passes, tuner.as_pass())
    say(f"tuning: budget {budget}, database {tuner.db.dir}")
    return strategy, tuner


def _tile_search(graph, preset, tuner, opts: CompileOptions, say):
    """({tile_key: tile}, report) at -O3 on x86: the int8 convs' and matmuls' register tiles measured here
    (targets/tile_search.py) or read from the tuning database; ({}, {}) otherwise."""
    if tuner is None:  # (search_tiles itself answers nothing for a preset without x86 int8 kernels)
        return {}, {}
    from .targets.tile_search import search_tiles
    from .targets.tune import TuneDB

    measure = tuner.budget.measures and tuner.cannot_measure() is None
    db = TuneDB(tuner.db.root / "tiles", preset.target_dict())  # beside the kernels' records
    tiles, report = search_tiles(graph, preset, db, measure=measure, threads=opts.threads, log=say)
    if report:
        say(f"tiles: {len(tiles)} of {len(report)} large int8 convs and matmuls run the tile timed fastest, "
            f"the rest the cost model's")
    return tiles, report


# --- for build systems: emitted device code, depfiles --------------------------------------

def _emit_sources(graph: Graph, preset, out: Path, opts: CompileOptions, warnings: List[str], say) -> None:
    """`--emit cuda,ptx`: kernels.cu / kernels.ptx in the artifact (listed in the manifest)."""
    if not opts.emit:
        return
    from .targets import cuda_emit

    try:
        cuda_emit.emit(graph, preset, out, opts.emit, warn=warnings.append, log=say)
    except cuda_emit.EmitError as e:
        raise CompileError(str(e)) from None


def depfile_inputs(model, opts: CompileOptions) -> List[str]:
    """Every file a compile reads, as given: the model, the calibration data (a folder and the
    .npz/.npy files in it), plugins and config files."""
    deps = [os.fspath(model)]
    if opts.calib:
        calib = Path(opts.calib)
        deps.append(os.fspath(opts.calib))
        if calib.is_dir():
            deps += [os.path.join(os.fspath(opts.calib), f.name) for f in sorted(calib.glob("*.np[yz]"))]
    deps += [os.fspath(p) for p in opts.plugins]
    config = getattr(opts, "config", None)  # --config qcc.toml (qcc/config.py)
    deps += [os.fspath(c) for c in ([config] if isinstance(config, (str, os.PathLike)) else config or [])]
    return list(dict.fromkeys(deps))


def _depfile_escape(path: str) -> str:
    """A path as Make and Ninja read it in a depfile (what gcc -MD does): a space, tab or '#' gets a
    backslash (and backslashes just before it are doubled), '$' becomes '$$'."""
    if "\n" in path or "\r" in path:
        raise CompileError(f"cannot write a depfile entry for a path with a newline: {path!r}")
    import re

    escaped = re.sub(r"(\\*)([ \t#])", lambda m: m.group(1) * 2 + "\\" + m.group(2), path)
    return escaped.replace("$", "$$")


def depfile_text(target: str, deps: Sequence[str]) -> str:
    return " ".join([_depfile_escape(target) + ":", *(_depfile_escape(d) for d in deps)]) + "\n"


def write_depfile(depfile, out_dir, model, opts: CompileOptions) -> None:
    """`--depfile FILE`: `OUT/manifest.json: model calib... plugins... config...`, written atomically."""
    target = os.path.join(os.fspath(out_dir), "manifest.json")
    text = depfile_text(target, depfile_inputs(model, opts))
    path = Path(depfile)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        raise CompileError(f"cannot write the depfile {depfile}: {e.strerror or e}") from None
