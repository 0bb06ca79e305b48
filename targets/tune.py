"""`-O3` kernel tuning: TVM meta-schedule over each fused kernel, measured against qcc's
own schedule, with a database that a rebuild reuses.

Where it sits. The CPU pipeline (strategy.FusedCPUStrategy) is legalize -> FuseOps/FuseTIR
-> InlineElementwise -> *kernel passes* -> dlight ApplyDefaultSchedule(*schedule_rules)
-> lowering. `TuningPass` is a kernel pass (the driver puts it in
`strategy.kernel_passes`): it sees every fused kernel exactly as the rules would, and

1. looks each kernel up in the database by workload (the structural hash of the PrimFunc);
2. with a budget, tunes the kernels whose record is missing or came from a smaller
   budget: builds and times qcc's rule-scheduled kernel, runs meta-schedule for the
   kernel's share of the trials (in-process builder and runner: no worker processes),
   re-times the best candidates against the rules' kernel, interleaved, keeps only
   candidates whose outputs are bit-identical to the rules' kernel on random inputs, and
   records the winner: "rules", or the winning schedule trace;
3. applies the records: a kernel whose winner is a trace gets that schedule and
   `tirx.is_scheduled` (so the rules skip it); every other kernel is left to the rules.

So tuning never makes a kernel slower than qcc's default (as measured here), and a
rebuild from a warm database measures nothing: it only replays traces (milliseconds a
kernel). Replaying a trace is deterministic, so two builds from one database give the
same bytes.

Search: meta-schedule's replay-trace strategy (random samples of the design space, no cost
model: with tens of trials a kernel there is too little data to train one, and nothing to
install). The design space is meta-schedule's default for llvm minus `AddRFactor` (an rfactor
reorders a float reduction, and qcc keeps float rounding identical to the reference
interpreter) and minus `RewriteLayout` (weights are packed at lowering time). Tiling,
fusing, parallelising, vectorising spatial loops and unrolling never change the
sequence of operations that produces one output element.

Database: DIR/<key>/<workload>.json, one small JSON file per kernel, written atomically.
The key hashes the TVM target, the TVM and tvm-ffi versions and this module's FORMAT, so
another target or another TVM never reads stale records. DIR is `--tune-db`, default
$QCC_CACHE_DIR/tune-db (else ~/.cache/qcc/tune-db).

Budget: `parse_budget("64")` is 64 trials for the whole model, spread over the kernels by
estimated FLOPs (at least MIN_TRIALS each, biggest first, qcc's hand-written kernels last,
until the budget runs out);
"10m"/"90s"/"1h" is a time limit (kernels tuned biggest first, TIME_TRIALS trials each,
until the time is up; a rerun goes on with the kernels not reached); "0" applies the
database only.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

FORMAT = 1            # bump when a record's meaning changes: old records are then not read
MIN_TRIALS = 32       # fewer per kernel find nothing: on PP-OCR cls, 8-18 trials beat qcc's schedule
                      # on none of 12 kernels; 64 trials found a 3x faster depthwise conv
HAND_KERNEL = re.compile(r"(^|_)qcc_")  # family modules name their hand-written kernels qcc_<family>_*
TIME_TRIALS = 32      # trials per kernel under a time budget
TOP_K = 3             # candidates re-timed against the rules' kernel
MIN_GAIN = 0.03       # a candidate must be this much faster than the rules' kernel to win
DEFAULT_BUDGET = "64"


class TuneError(ValueError):
    """A bad tuning option (budget text, database folder)."""


# --- options --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    """How much tuning one compile may do: `trials` in all, or `seconds` of wall time."""

    trials: Optional[int] = None
    seconds: Optional[float] = None

    @property
    def measures(self) -> bool:
        return bool(self.trials) or bool(self.seconds)

    def __str__(self) -> str:
        return f"{self.trials} trials" if self.seconds is None else f"{self.seconds:g} s"


def parse_budget(text) -> Budget:
    """'64' (trials), '10m', '90s', '1h' (wall time), '0' (apply the database only)."""
    s = str(text).strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?", s)
    if not m:
        raise TuneError(f"--tune-budget '{text}': expected trials (64) or a time (10m, 90s, 1h)")
    n, unit = m.group(1), m.group(2)
    if unit is None:
        if "." in n:
            raise TuneError(f"--tune-budget '{text}': a number of trials is a whole number")
        return Budget(trials=int(n))
    return Budget(seconds=float(n) * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[unit])


def default_db_dir() -> Path:
    """$QCC_CACHE_DIR/tune-db, else ~/.cache/qcc/tune-db (the cache of targets/emulate.py)."""
    env = os.environ.get("QCC_CACHE_DIR", "").strip()
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "qcc") / "tune-db"


# --- the database ---------------------------------------------------------------------------

def _versions() -> Dict[str, str]:
    import tvm
    import tvm_ffi

    return {"tvm": tvm.__version__, "tvm_ffi": getattr(tvm_ffi, "__version__", "?")}


class TuneDB:
    """The records for one (target, TVM, tvm-ffi) key: DIR/<key>/<workload>.json."""

    def __init__(self, root, target_dict: Dict):
        self.root = Path(root).expanduser()
        ident = {"format": FORMAT, "target": target_dict, **_versions()}
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        kind = str(target_dict.get("kind", "target"))
        cpu = str(target_dict.get("mcpu", "") or target_dict.get("arch", "") or "generic")
        self.key = re.sub(r"[^\w.-]", "_", f"{kind}-{cpu}-{digest}")
        self.ident = ident
        self.dir = self.root / self.key

    def get(self, workload: str) -> Optional[Dict]:
        try:
            rec = json.loads((self.dir / f"{workload}.json").read_text())
        except (OSError, ValueError):
            return None
        return rec if rec.get("format") == FORMAT and rec.get("workload") == workload else None

    def put(self, workload: str, record: Dict) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            key_file = self.dir / "key.json"
            if not key_file.exists():
                _atomic_write(key_file, json.dumps(self.ident, indent=1, sort_keys=True) + "\n")
            _atomic_write(self.dir / f"{workload}.json",
                          json.dumps({**record, "format": FORMAT, "workload": workload}, sort_keys=True) + "\n")
        except OSError as e:
            raise TuneError(f"cannot write the tuning database {self.dir}: {e.strerror or e}") from None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def trace_to_json(trace) -> list:
    """A schedule trace as plain JSON. Trace.as_json keeps IntImm/FloatImm (their dtype
    matters: an int64 loop bound is not an int32 one); they become {"$imm": [dtype, value]}."""
    from tvm import tirx

    def enc(o):
        if isinstance(o, (tirx.IntImm, tirx.FloatImm)):
            return {"$imm": [str(o.ty), o.value]}
        if isinstance(o, (list, tuple)):
            return [enc(x) for x in o]
        if isinstance(o, dict):
            return {str(k): enc(v) for k, v in o.items()}
        return o

    return enc(trace.as_json(remove_postproc=False))


def trace_from_json(obj):
    """The inverse of trace_to_json: what Trace.apply_json_to_schedule takes."""
    from tvm import tirx

    def dec(o):
        if isinstance(o, dict):
            if set(o) == {"$imm"}:
                dtype, value = o["$imm"]
                is_float = dtype.startswith(("float", "bfloat"))
                return tirx.FloatImm(dtype, value) if is_float else tirx.IntImm(dtype, value)
            return {k: dec(v) for k, v in o.items()}
        if isinstance(o, list):
            return [dec(x) for x in o]
        return o

    return dec(obj)


def workload_key(func) -> str:
    """The database key of a kernel: its structural hash (names of the function aside)."""
    import tvm_ffi

    return f"{tvm_ffi.structural_hash(func.with_attr('global_symbol', 'main')) & (2 ** 64 - 1):016x}"


# --- measuring ------------------------------------------------------------------------------

def _static_params(func) -> Optional[List[Tuple[Tuple[int, ...], str]]]:
    """(shape, dtype) of each buffer parameter; None when a shape is not static."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo, TensorInfo

    out = []
    try:
        infos = ArgInfo.from_prim_func(func)
    except Exception:  # noqa: BLE001 - a scalar parameter or the like: not measured
        return None
    for info in infos:
        if not isinstance(info, TensorInfo):
            return None
        try:
            out.append((tuple(int(d) for d in info.shape), str(info.dtype)))
        except (TypeError, ValueError):
            return None
    return out


_NESTED_LOAD = re.compile(r"\[[^\]\n]*\b\w+\[")


def _data_dependent(func) -> bool:
    """True when a buffer index reads a buffer (gather/take): random inputs could index out
    of bounds, so such kernels are not measured here (and left to the rules)."""
    return any(_NESTED_LOAD.search(line) for line in func.script().splitlines()
               if "T.reads" not in line and "T.writes" not in line)


def _random_args(params, seed: int = 0) -> List[np.ndarray]:
    """Inputs for a kernel: small nonzero integers (no division by zero), normal floats."""
    rng = np.random.default_rng(seed)
    arrays = []
    for shape, dtype in params:
        if dtype == "bool":
            arrays.append(rng.integers(0, 2, shape).astype(bool))
        elif dtype.startswith(("int", "uint")):
            arrays.append(rng.integers(1, 8, shape).astype(dtype))
        else:
            arrays.append(rng.normal(0, 1, shape).astype(dtype))
    return arrays


def _to_device(arrays):
    import tvm

    return [tvm.runtime.tensor(a, tvm.cpu()) for a in arrays]


def _time(rt, args, *, number: int = 0, repeat: int = 3, min_repeat_ms: int = 30) -> float:
    """Best mean seconds of one call (cache warm; the evaluator picks `number` from min_repeat_ms)."""
    import tvm

    f = rt.time_evaluator("main", tvm.cpu(), number=max(number, 1), repeat=repeat, min_repeat_ms=min_repeat_ms)
    return float(min(f(*args).results))


def _outputs(rt, arrays) -> List[np.ndarray]:
    args = _to_device([a.copy() for a in arrays])
    rt["main"](*args)
    return [a.numpy() for a in args]


def _same(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> bool:
    return all(x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in zip(a, b))


def _build(mod, target):
    import tvm

    with tvm.transform.PassContext(opt_level=3):
        return tvm.tirx.build(mod, target=target)


def _ms_classes():
    """In-process meta-schedule builder and runner (the default LocalBuilder restarts a
    worker pool per batch, each importing every tensor intrinsic: tens of seconds a task)."""
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.runner import PyRunner
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture
    from tvm.ir.utils import derived_object

    counter = itertools.count()

    @derived_object
    class InProcessBuilder(PyBuilder):
        def __init__(self, store: Dict):
            super().__init__()
            self.store = store

        def build(self, build_inputs):
            results = []
            for bi in build_inputs:
                try:
                    rt = _build(bi.mod, bi.target)
                except Exception as e:  # noqa: BLE001 - a candidate that does not build
                    results.append(BuilderResult(None, f"{type(e).__name__}: {str(e)[:400]}"))
                    continue
                path = f"qcc-in-process-{next(counter)}"
                self.store[path] = rt
                results.append(BuilderResult(path, None))
            return results

    @derived_object
    class InProcessRunner(PyRunner):
        def __init__(self, store: Dict, args: List, trials: List[int]):
            super().__init__()
            self.store, self.args, self.trials = store, args, trials

        def run(self, runner_inputs):
            futures = []
            for ri in runner_inputs:
                rt = self.store.pop(str(ri.artifact_path), None)
                self.trials[0] += 1
                try:
                    futures.append(LocalRunnerFuture(res=[_time(rt, self.args, repeat=1)]))
                except Exception as e:  # noqa: BLE001 - a candidate that fails at run time
                    futures.append(LocalRunnerFuture(error_message=f"{type(e).__name__}: {str(e)[:400]}"))
            return futures

    return InProcessBuilder, InProcessRunner


def _space():
    from tvm.s_tir import meta_schedule as ms

    # ApplyCustomRule is out too: it runs the function a block's "schedule_rule" annotation
    # names, and for CPUs TVM registers only TOPI's Winograd ones, which qcc never emits; on
    # every legalized max pool (meta_schedule.pool_max) it printed "Unknown schedule rule" to
    # the terminal and went on with the other rules, as it now does without it
    rules = [r for r in ms.schedule_rule.ScheduleRule.create("llvm")
             if not isinstance(r, (ms.schedule_rule.AddRFactor, ms.schedule_rule.ApplyCustomRule))]
    postprocs = [p for p in ms.postproc.Postproc.create("llvm") if not isinstance(p, ms.postproc.RewriteLayout)]
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=postprocs,
                                             mutator_probs=ms.mutator.Mutator.create("llvm"))


class _NoTensorIntrinImport:
    """While searching, `import tvm.s_tir.tensor_intrin` (each TuneContext does it) is a no-op.

    The package's __init__ registers every tensor intrinsic of every back end (CUDA, ROCm,
    Hexagon, ...): a minute or more of imports on a loaded machine, for a design space that
    tensorizes nothing. A stand-in module is put in sys.modules for the search and taken
    out after, so a later real import runs the package's __init__ as usual."""

    NAME = "tvm.s_tir.tensor_intrin"

    def __enter__(self):
        import sys
        import types

        self.stub = None
        if self.NAME not in sys.modules:
            import tvm.s_tir

            self.stub = types.ModuleType(self.NAME, "qcc stand-in during tuning (targets/tune.py)")
            self.stub.__path__ = [os.path.join(os.path.dirname(tvm.s_tir.__file__), "tensor_intrin")]
            sys.modules[self.NAME] = self.stub
        return self

    def __exit__(self, *exc):
        import sys

        if self.stub is not None and sys.modules.get(self.NAME) is self.stub:
            del sys.modules[self.NAME]
        return False


# --- the pass -------------------------------------------------------------------------------

@dataclass
class _Task:
    key: str
    name: str
    func: object            # the kernel as the rules would see it
    flops: float = 0.0
    trials: int = 0         # what the budget gives it


@dataclass
class TuneStats:
    """What one compile did with the database (the manifest keeps the deterministic part)."""

    kernels: int = 0
    tuned: int = 0          # kernels given a tuned schedule from the database
    rules: int = 0          # kernels whose record says qcc's own schedule won
    no_record: int = 0
    failed: int = 0         # records whose trace did not replay (left to the rules)
    measured_kernels: int = 0
    trials: int = 0
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)

    def manifest(self, db: TuneDB) -> Dict:
        return {"db_key": db.key, "kernels": self.kernels, "tuned": self.tuned, "rules": self.rules,
                "no_record": self.no_record, "failed": self.failed}


class TuningPass:
    """The kernel pass of `-O3`: tune what the budget covers, then apply the database.

        tp = TuningPass(strategy, preset, budget=parse_budget("64"), db_dir=None, log=print)
        strategy.kernel_passes = (tp.as_pass(),)
        build(graph, preset, out, strategy=strategy)
        tp.stats.manifest(tp.db)
    """

    def __init__(self, strategy, preset, *, budget: Budget = Budget(trials=0), db_dir=None,
                 log: Optional[Callable[[str], None]] = None):
        self.strategy = strategy
        self.preset = preset
        self.budget = budget
        self.db = TuneDB(db_dir if db_dir is not None else default_db_dir(), preset.target_dict())
        self.log = log or (lambda m: None)
        self.stats = TuneStats()

    # -- tvm.transform glue --
    def as_pass(self):
        import tvm

        @tvm.transform.module_pass(opt_level=0, name="qcc.TuneKernels")
        def transform(mod, _ctx):
            return self.run(mod)

        return transform

    def run(self, mod):
        import tvm
        from tvm import tirx

        kernels = [(gv, f) for gv, f in mod.functions_items()
                   if isinstance(f, tirx.PrimFunc) and not _is_scheduled(f)]
        tasks: Dict[str, _Task] = {}
        for gv, f in kernels:
            k = workload_key(f)
            tasks.setdefault(k, _Task(k, gv.name_hint, f))
        self.stats = TuneStats(kernels=len(kernels))
        if self.budget.measures and tasks:
            why = self.cannot_measure()
            if why:
                self.stats.notes.append(why)
                self.log(f"tuning: {why}; applying the database only")
            else:
                self._tune(list(tasks.values()))
        updates = {}
        for gv, f in kernels:
            new = self._apply(f, self.db.get(workload_key(f)))
            if new is not None:
                updates[gv] = new
        st = self.stats
        for note in st.notes:
            self.log(f"tuning: {note}")
        self.log(f"tuning: {st.kernels} kernels: {st.tuned} tuned, {st.rules} keep qcc's schedule, "
                 f"{st.no_record} not in the database"
                 + (f"; measured {st.measured_kernels} ({st.trials} trials, {st.seconds:.0f} s)"
                    if st.measured_kernels else ""))
        if not updates:
            return mod
        funcs = {gv: updates.get(gv, f) for gv, f in mod.functions_items()}
        return tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos)

    def _apply(self, func, rec):
        """The kernel scheduled by its record's trace (None: leave it to the rules)."""
        from tvm import s_tir
        import tvm

        if rec is None:
            self.stats.no_record += 1
            return None
        if rec.get("winner") != "tuned":
            self.stats.rules += 1
            return None
        try:
            sch = s_tir.Schedule(tvm.IRModule({"main": func}))
            s_tir.schedule.Trace.apply_json_to_schedule(trace_from_json(rec["trace"]), sch)
            new = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        except Exception:  # noqa: BLE001 - a stale or foreign record: the rules take the kernel
            self.stats.failed += 1
            return None
        self.stats.tuned += 1
        return new

    # -- tuning --
    def cannot_measure(self) -> Optional[str]:
        """Why this machine cannot time the preset's kernels, or None. It can whenever the code
        runs here: a preset for another cpu of the same family (x86-avx512 on a Zen 4, say) is
        timed on this one when it has every capability the preset's code uses -- the only way
        to tune it without the device, and the same instructions -- and the log says so."""
        import platform

        from tvm.target.codegen import llvm_get_system_cpu

        t = self.preset.target_dict()
        if t.get("kind") != "llvm":
            return f"{self.preset.name} kernels cannot be timed on this machine"
        if not self.preset.host_runnable:
            from .presets import _host_capabilities

            missing = sorted(self.preset.capabilities - _host_capabilities())
            return (f"{self.preset.name} kernels cannot be timed on this {platform.machine().lower()} machine"
                    + (f" (no {', '.join(missing)})" if missing else ""))
        cpu = t.get("mcpu")
        if cpu and cpu != llvm_get_system_cpu() and self.preset.name != "host":
            self.stats.notes.append(f"timing {self.preset.name} (mcpu {cpu}) kernels on this machine's cpu "
                                    f"({llvm_get_system_cpu()}), which runs all of its instructions")
        return None

    def _allocate(self, tasks: List[_Task]) -> List[_Task]:
        """The tasks to tune, biggest first, each with its share of a trial budget."""
        import tvm
        from tvm.s_tir.analysis import estimate_tir_flops

        for t in tasks:
            try:
                t.flops = float(estimate_tir_flops(tvm.IRModule({"main": t.func})))
            except Exception:  # noqa: BLE001
                t.flops = 0.0
        # hand-written kernels (x86_int8, arm_int8) sit near the machine's peak: tuned last
        order = sorted(tasks, key=lambda t: (bool(HAND_KERNEL.search(t.name)), -t.flops, t.key))
        if self.budget.trials is None:
            for t in order:
                t.trials = TIME_TRIALS
            return order
        left, total = self.budget.trials, sum(t.flops for t in order) or 1.0
        chosen = []
        for t in order:
            if left < MIN_TRIALS:
                break
            t.trials = min(left, max(MIN_TRIALS, int(round(self.budget.trials * t.flops / total))))
            left -= t.trials
            chosen.append(t)
        return chosen

    def _tune(self, tasks: List[_Task]) -> None:
        from .builder import configure_threads

        todo = []
        for t in self._allocate(tasks):
            rec = self.db.get(t.key)
            if rec is not None and int(rec.get("trials", 0)) >= t.trials:
                continue  # tuned before with at least this budget
            if _static_params(t.func) is None or _data_dependent(t.func):
                continue
            todo.append((t, rec))
        if not todo:
            return
        threads = configure_threads(None)
        rules = list(self.strategy.schedule_rules(self.preset.target()))
        target = self._tune_target(threads)
        start = time.perf_counter()
        best_total = [0.0, 0.0]
        for i, (t, old) in enumerate(todo, 1):
            if self.budget.seconds is not None and time.perf_counter() - start > self.budget.seconds:
                self.stats.notes.append(f"time budget used up after {i - 1} of {len(todo)} kernels")
                break
            rec = self._tune_one(t, old, rules, target, threads)
            self.stats.measured_kernels += 1
            if rec is None:
                continue
            try:
                self.db.put(t.key, rec)
            except TuneError as e:
                self.stats.notes.append(str(e))
                self.log(f"tuning: warning: {e}")
                self.budget = Budget(trials=0)  # nothing more would be kept
                break
            if rec["rules_us"] is None:
                continue
            best = rec["tuned_us"] if rec["winner"] == "tuned" else rec["rules_us"]
            best_total[0] += rec["rules_us"]
            best_total[1] += best
            self.log(f"tuning: kernel {i}/{len(todo)}: {t.name} qcc {rec['rules_us']:.1f} us, best {best:.1f} us "
                     f"(kernels so far {best_total[0]:.0f} -> {best_total[1]:.0f} us)")
        self.stats.seconds = time.perf_counter() - start

    def _tune_target(self, threads: int):
        import tvm

        d = self.preset.target_dict()
        d["num-cores"] = int(threads)
        return tvm.target.Target(d)

    def _tune_one(self, t: _Task, old: Optional[Dict], rules, target, threads: int) -> Optional[Dict]:
        """Time the rules' kernel, search, re-time the best candidates; the record to keep."""
        import tempfile

        import tvm
        from tvm import s_tir
        from tvm.s_tir import dlight
        from tvm.s_tir import meta_schedule as ms

        func = t.func.with_attr("global_symbol", "main")
        mod = tvm.IRModule({"main": func})
        arrays = _random_args(_static_params(func))
        args = _to_device(arrays)
        try:
            with target:
                # a fresh module: ApplyDefaultSchedule updates the module it is given in place
                ruled = dlight.ApplyDefaultSchedule(*rules)(tvm.IRModule({"main": func})) if rules else mod
            rules_rt = _build(ruled, target)
            ref = _outputs(rules_rt, arrays)
        except Exception as e:  # noqa: BLE001 - the rules' kernel must build; if not, leave it
            self.stats.notes.append(f"{t.name}: rules kernel not timed ({type(e).__name__}); not tuned")
            # recorded, so a rebuild does not try again
            return {"name": t.name, "trials": t.trials, "threads": threads, "rules_us": None, "winner": "rules"}

        store: Dict = {}
        trials = [0]
        builder_cls, runner_cls = _ms_classes()
        database = ms.database.MemoryDatabase()
        with tempfile.TemporaryDirectory(prefix="qcc-tune-") as work:
            _quiet_ms_logs()
            try:
                with _NoTensorIntrinImport():
                    ms.tune_tir(mod, target, work, max_trials_global=t.trials, max_trials_per_task=t.trials,
                                num_trials_per_iter=min(t.trials, 16), builder=builder_cls(store),
                                runner=runner_cls(store, args, trials), database=database,
                                cost_model="random",
                                measure_callbacks=[ms.measure_callback.AddToDatabase(),
                                                   ms.measure_callback.UpdateCostModel()],
                                task_scheduler="round-robin", space=_space(),
                                strategy=ms.search_strategy.ReplayTrace(),
                                num_tuning_cores=threads, seed=0)
            except Exception as e:  # noqa: BLE001 - a search that fails leaves the rules' kernel
                if os.environ.get("QCC_DEBUG"):
                    import traceback

                    traceback.print_exc()
                last = (str(e).strip().splitlines() or [""])[-1][:300]
                self.stats.notes.append(f"{t.name}: search failed ({type(e).__name__}: {last})")
        self.stats.trials += trials[0]
        candidates = []
        try:
            top = database.get_top_k(database.commit_workload(mod), TOP_K)
        except Exception:  # noqa: BLE001
            top = []
        if not top and trials[0]:
            self.stats.notes.append(f"{t.name}: no candidate ran ({trials[0]} tried)")
        for r in top:
            try:
                sch = s_tir.Schedule(mod)
                trace_json = trace_to_json(r.trace)
                # replayed from the JSON the database keeps, as a rebuild will replay it
                s_tir.schedule.Trace.apply_json_to_schedule(trace_from_json(trace_json), sch)
                rt = _build(sch.mod, target)
                if not _same(_outputs(rt, arrays), ref):
                    self.stats.notes.append(f"{t.name}: a candidate was not bit-exact; dropped")
                    continue
                candidates.append((rt, trace_json))
            except Exception as e:  # noqa: BLE001 - a candidate that does not replay is dropped
                self.stats.notes.append(f"{t.name}: a candidate did not replay ({type(e).__name__}); dropped")
                if os.environ.get("QCC_DEBUG"):
                    import traceback

                    traceback.print_exc()
        # interleaved re-timing, best of three rounds each
        rules_s = _time(rules_rt, args)
        times = [float("inf")] * len(candidates)
        for _ in range(3):
            for j, (rt, _tr) in enumerate(candidates):
                times[j] = min(times[j], _time(rt, args))
            rules_s = min(rules_s, _time(rules_rt, args))
        rec = {"name": t.name, "trials": max(t.trials, int(old.get("trials", 0)) if old else 0),
               "threads": threads, "rules_us": round(rules_s * 1e6, 2), "winner": "rules"}
        if candidates:
            j = int(np.argmin(times))
            rec["tuned_us"] = round(times[j] * 1e6, 2)
            if times[j] < (1 - MIN_GAIN) * rules_s:
                rec["winner"], rec["trace"] = "tuned", candidates[j][1]
        if old is not None and old.get("winner") == "tuned" and rec["winner"] == "rules":
            # an earlier, bigger search found a better schedule than this one: keep it
            # when it still replays and still beats the rules' kernel
            try:
                sch = s_tir.Schedule(mod)
                s_tir.schedule.Trace.apply_json_to_schedule(trace_from_json(old["trace"]), sch)
                old_s = min(_time(_build(sch.mod, target), args) for _ in range(3))
                if old_s < (1 - MIN_GAIN) * rules_s:
                    rec.update(winner="tuned", trace=old["trace"], tuned_us=round(old_s * 1e6, 2))
            except Exception:  # noqa: BLE001
                pass
        return rec


def _is_scheduled(func) -> bool:
    return func.attrs is not None and "tirx.is_scheduled" in func.attrs and bool(func.attrs["tirx.is_scheduled"])


def _quiet_ms_logs() -> None:
    import logging

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
