"""assign-bitwidths: choose each layer's precision from measured sensitivity, under budgets.

Uniform int8 is where other tools stop, and on real models it breaks. Per conv/gemm/
matmul this pass picks weight bits in {4, 8, 16, float} and activation bits in
{8, 16, float}, written as a choice: "int8" (w8a8), "w4a8", "w8a16", "w4a16",
"w16a8", "w16a16" or "float". With calibration data it measures, for a candidate
choice of one layer, the model's output SQNR when only that layer is quantized
(reusing float activations, see qcc.sensitivity), and searches, starting from
all-int8:

1. size (`size-budget`, bytes of constants as the artifact stores them, int4
   packed): while over budget, the layer whose weights lose the least SQNR per
   byte saved goes to 4-bit weights (without calibration data: the largest first);
2. error (`min-sqnr`, dB at the outputs): while under budget, the layer adding the
   most output noise per MAC (a knapsack ratio: cheap noisy layers before large
   ones) is raised: to 16-bit activations (or, with `w16=true`, 16-bit weights if
   that leaves less noise) when that alone brings its error well under the budget (its
   compute stays integer), else to float; a w4 layer back to w8 when the size
   budget allows. A raise is kept only if the whole model's
   output SQNR gains `min-gain-db`: when the noise comes from elsewhere, raising
   layers would only spend the int8 share (and speed). A layer whose own noise is too
   small a share of the output's for its removal to gain that much is passed over without
   a model run (`screen`); `patience=N` also stops the search after N raises in a row that
   did not pay. Never below `min-int8-fraction` of the MACs in 8-bit-or-narrower integer,
   never over the size budget.

Measurements run on the first calibration batches (`samples`, fewer for large inputs:
`sample_values`, or for large activations: `cache-bytes`, said in the report under
`bitwidth_search_batches`); each candidate recomputes only what lies downstream of its layer.

User rules (`precision=head.*:float;conv1:int16;op:matmul=w4`, `--precision`, or
qcc.toml's [precision]) are honoured first and never overridden: GLOB=CHOICE by
layer name, op:TYPE=CHOICE (or a bare op type) by op; later rules win. Choice
aliases: int4/w4 = w4a8, int16/a16 = w8a16, w16 = w16a8, int8/w8/a8 = int8.
Decisions go to ctx.options["bitwidths"] ({layer: choice}) for `quantize`, and to
the report with the reason, bits, size and the sensitivities measured per layer.

Before: every layer int8    After: {"conv_12": "w8a16" (int8 alone: 18.2 dB), "fc": "w4a8", others int8}
(the IR is unchanged; the decisions travel in the context and the report)
"""
from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from qcc.analysis import macs, weight_bytes
from qcc.ir.graph import Graph, Node
from qcc.pass_manager import PassContext
from qcc.passes_registry import Pass, register_pass

CHOICES = ("int8", "float", "w4a8", "w8a16", "w4a16", "w16a8", "w16a16")
ALIASES = {
    "float": "float", "fp32": "float", "f32": "float",
    "int8": "int8", "i8": "int8", "w8": "int8", "a8": "int8", "w8a8": "int8",
    "int4": "w4a8", "i4": "w4a8", "w4": "w4a8",
    "int16": "w8a16", "i16": "w8a16", "a16": "w8a16",
    "w16": "w16a8",
}
LAYER_OPS = ("conv", "gemm", "matmul", "conv_transpose")
QUANTIZABLE = ("conv", "gemm", "matmul")  # what `quantize` rewrites; conv_transpose stays float
# (unless `fuse` made it a conv: kernel == stride)


def normalize_choice(text: str) -> str:
    """A precision as the user wrote it -> its canonical choice ('int16' -> 'w8a16')."""
    t = str(text).strip().lower()
    if t in ALIASES:
        return ALIASES[t]
    m = re.fullmatch(r"w(4|8|16)a(8|16)", t)
    if m is None:
        raise ValueError(f"'{text}' is not a precision (float, int8, int4/w4, int16/a16, w16, "
                         f"or w{{4,8,16}}a{{8,16}} like w4a16)")
    return "int8" if t == "w8a8" else t


def choice_bits(choice: str) -> Tuple[object, object]:
    """(weight bits, activation bits) of a choice; 'float' for float."""
    if choice == "float":
        return "float", "float"
    if choice == "int8":
        return 8, 8
    m = re.fullmatch(r"w(\d+)a(\d+)", choice)
    return int(m.group(1)), int(m.group(2))


def parse_precision(text: str) -> List[Tuple[str, str]]:
    """'conv1:float;head.*=int16;op:matmul=w4' -> [(pattern, choice), ...]."""
    rules = []
    for item in filter(None, (t.strip() for t in str(text or "").replace(",", ";").split(";"))):
        sep = "=" if "=" in item else ":"
        if sep not in item:
            raise ValueError(f"precision rule '{item}' must be GLOB=PRECISION (e.g. 'head.*=float')")
        pat, choice = (s.strip() for s in item.rsplit(sep, 1))
        try:
            rules.append((pat, normalize_choice(choice)))
        except ValueError as e:
            raise ValueError(f"precision rule '{item}': {e}") from None
    return rules


def rule_matches(pattern: str, node: Node) -> bool:
    """op:TYPE matches by op type; anything else is a glob on the layer name (or a bare op type)."""
    if pattern.startswith("op:"):
        return node.op == pattern[3:]
    return fnmatch.fnmatchcase(node.name, pattern) or pattern == node.op


def parse_error_budget(text: str) -> float:
    """'30dB' -> 30.0 (minimum output SQNR); '0.01' (a relative error) -> 40.0 dB."""
    t = str(text).strip().lower()
    if not t:
        return 0.0
    bad = ValueError(f"--max-error {text}: give dB (like 30dB) or a relative error in (0, 1)")
    try:
        r = float(t[:-2] if t.endswith("db") else t)
    except ValueError:
        raise bad from None
    if not math.isfinite(r):
        raise bad
    if t.endswith("db"):
        return r
    if not 0 < r < 1:
        raise bad
    return -20 * math.log10(r)


_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "kib": 1 << 10, "mib": 1 << 20,
          "gib": 1 << 30, "k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9}


def parse_size(text) -> int:
    """'2MB' -> 2000000, '512KiB' -> 524288, '123456' -> 123456 (bytes; kB/MB/GB are powers of 10)."""
    t = str(text).strip().lower().replace(" ", "")
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[0-9]+)?)([kmg]i?b?|b)?", t)
    if m is None or (m.group(2) or "") not in _UNITS:
        raise ValueError(f"size budget '{text}': give bytes, or a size like 512kB, 2MB, 1.5MiB")
    n = float(m.group(1)) * _UNITS[m.group(2) or ""]
    if n <= 0:
        raise ValueError(f"size budget '{text}' must be positive")
    return int(n)


# --- what a choice costs ----------------------------------------------------------------------

def _layer_consts(n: Node):
    """The float weight (and bias) constants a layer owns, or None for non-constant weights."""
    w = n.inputs[1] if len(n.inputs) > 1 else None
    if w is None or not w.is_const or w.dtype not in ("f32", "f16", "bf16", "f64"):
        return None
    b = n.inputs[2] if len(n.inputs) > 2 else None
    return w, (b if b is not None and b.is_const else None)


def layer_bytes(n: Node, choice: str) -> int:
    """Bytes the layer's weights and bias take in the artifact with this choice (0 when
    its weights are not float constants: they are what they are)."""
    return sum(nbytes for _, nbytes in _const_bytes(n, choice))


def _const_bytes(n: Node, choice: str) -> List[Tuple[Tuple[int, str], int]]:
    """[((id of the constant, its form), its bytes in that form)] for the layer's weight and
    bias. The form tells copies apart: layers sharing a weight share its int8 copy, but one
    of them left float keeps the float copy in the artifact as well."""
    consts = _layer_consts(n)
    if consts is None:
        return []
    w, b = consts
    if choice == "float" or n.op not in QUANTIZABLE:
        return [((id(c), "float"), c.type.nbytes) for c in (w, b) if c is not None]
    wbits = choice_bits(choice)[0]
    channels = w.shape[0] if n.op == "conv" else n.output.shape[-1]
    wb = (w.type.size + 1) // 2 if wbits == 4 else w.type.size * wbits // 8
    return [((id(w), f"w{wbits}"), wb)] + ([((id(b), "i32"), 4 * channels)] if b is not None else [])


def _constant_weights(n: Node) -> bool:
    """Whether the layer's weights are a constant (or a QDQ model's dequantized one)."""
    from qcc.passes.quantize import _fixed_weights  # not at the top: quantize's imports come back here

    w = n.inputs[1] if len(n.inputs) > 1 else None
    return w is not None and (w.is_const or _fixed_weights(w) is not None)


def _fixed_bytes(graph: Graph, layers: List[Node]) -> int:
    """Bytes of every constant no layer decision changes (a weight several layers share is
    theirs: _Search.size counts it once per form the layers give it)."""
    owned = set()
    for n in layers:
        consts = _layer_consts(n)
        if consts is not None:
            owned.update(id(c) for c in consts if c is not None)
    return weight_bytes(graph) - sum(c.type.nbytes for c in graph.constants.values() if id(c) in owned)


@register_pass
@dataclass(frozen=True)
class AssignBitwidths(Pass):
    """Choose each layer's weight/activation bits from measured sensitivity under error and size budgets."""

    name = "assign-bitwidths"
    precision: str = ""
    search: bool = True  # measure and search when calibration data is there
    min_sqnr: float = 30.0  # dB at the model's outputs; 0 disables the error budget
    min_int8_fraction: float = 0.0
    # -O2's own error budget (min-sqnr, when no --max-error is given) raises layers only while
    # this share of the MACs stays int8 (a floor the user sets wins; a budget the user gives is
    # met whatever it costs, down to their floor). The budget is a margin, not a requirement,
    # and ranges fitted to held-out data (insert-observers' tails) measure lower on the
    # calibration batches: PP-OCR cls all-int8 27 dB instead of 35. With a first version of
    # the tails the search took cls to 72% int8 MACs on 256 calibration crops, worse held out;
    # PP-OCR det with the tails measured IoU 0.966 (worst image 0.748) with this floor, 0.940
    # (0.410) at 88% int8 MACs without it (benchmarks/accuracy.py, session 43)
    own_floor: float = 0.9
    size_budget: str = ""  # bytes of constants, e.g. 2MB; '' = none
    samples: int = 4  # calibration batches used for the measurements, at most ...
    # ... and no more than hold this many input values (at least one batch): each candidate
    # costs a model run per batch, and one 384x576 detector image already holds 221k outputs
    sample_values: int = 1_500_000
    # ... and no more than keep this many bytes of activations: the search keeps every value
    # of one float run per batch, plus the current assignment's and the last candidate's
    # (3x). BEiT-base computes 450 MB of values per 224x224 image: 3 batches, not 4; a
    # model four times its size gets one, where it would have needed ~20 GB
    cache_bytes: int = 4 << 30
    # stop the error search after this many raises in a row measured and undone (0: never):
    # the greedy order puts the noisiest layers per MAC first, so after a run of raises that
    # bought nothing the rest are unlikely to, and each costs a model run
    patience: int = 0
    # skip, without a model run, a layer whose own noise is under this fraction of what it
    # would have to remove to gain min-gain-db (its noise share under 0.5 x 5.6% at 0.25 dB):
    # noise adds up only roughly, hence the margin
    screen: float = 0.5
    max_float_layers: int = 16
    a16: bool = True  # the error search may raise layers to 16-bit activations
    # ... and to 16-bit weights: off by default, on PP-OCR rec it measured worse (58.3% exact
    # strings at 0.740 int8 MACs against 68.8% at 0.917): each w16 raise passes the per-raise
    # gain test on the calibration batches yet the sum costs the int8 share and unseen inputs
    w16: bool = False
    headroom: float = 6.0  # dB under which a16 alone must bring a layer's error below the budget
    min_gain_db: float = 0.25  # a raised layer must lift the output SQNR at least this much
    # then, up to this share of the MACs at 16-bit activations, the layers noisiest per MAC,
    # judged by their own noise added up rather than by the whole model on the same few
    # batches (_Search.spend_a16 says why); 0 turns it off, and so does an error budget the
    # user gave (--max-error): that budget is what they asked for, this is -O2's own margin
    a16_share: float = 0.10
    # ... each of them removing at least this much of that predicted noise: a low bar, since
    # the share, not this, bounds the cost, and the order puts the noisiest per MAC first (at
    # min-gain-db's 0.25 only 3 layers passed on PP-OCR cls, 2.8% of its MACs)
    a16_min_gain_db: float = 0.02

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        rules = parse_precision(self.precision) + parse_precision(ctx.options.get("precision") or "")
        layers = [n for n in graph.nodes if n.op in LAYER_OPS]
        by_name = {n.name: n for n in layers}
        layer_macs = {n.name: macs(n) for n in layers}
        decisions: Dict[str, str] = {}
        report: Dict[str, Dict] = {}
        pinned = set()
        for n in layers:
            choice, why = "int8", "default"
            for pat, c in rules:  # later rules win, like command-line flags
                if rule_matches(pat, n):
                    choice, why = c, f"user rule {pat}"
                    pinned.add(n.name)
            if n.op in QUANTIZABLE and not _constant_weights(n):
                # attention's Q.K^T and P.V: quantize rewrites layers with constant weights
                # only, so such a layer stays float whatever is chosen (and measuring it
                # would cost a model run for nothing)
                choice, why = "float", "both operands are activations: computed in float"
                pinned.add(n.name)
            decisions[n.name] = choice
            report[n.name] = {"bits": choice, "why": why, "macs": layer_macs[n.name]}
        budget_text = ctx.options.get("size_budget") or self.size_budget
        size_budget = parse_size(budget_text) if budget_text else None
        samples = ctx.options.get("calib")
        samples = self._measurement_batches(graph, samples, ctx) \
            if self.search and samples and isinstance(samples, list) else None
        s = _Search(self, graph, ctx, layers, by_name, decisions, report, pinned, layer_macs, samples, size_budget)
        try:
            if size_budget is not None:
                s.fit_size()
            budget = ctx.options.get("min_sqnr", self.min_sqnr)
            if samples and budget:
                measured_db = s.meet_error(budget)
                if self.a16 and self.a16_share > 0 and "min_sqnr" not in ctx.options:
                    s.spend_a16(self.a16_share, measured_db)
        finally:
            s.release()
        for first, names in s.members.items():  # the search wrote a group's reasons on its first layer
            for m in names[1:]:
                for k in ("why", "not_raised"):
                    if k in report[first]:
                        report[m][k] = report[first][k]
        for name, r in report.items():
            w, a = choice_bits(decisions[name])
            r.update(bits=decisions[name], weight_bits=w, activation_bits=a,
                     weight_bytes=layer_bytes(by_name[name], decisions[name]))
        if size_budget is not None:
            ctx.report["size_budget"] = {"budget_bytes": size_budget, "predicted_bytes": s.size()}
        ctx.options["bitwidths"] = decisions
        ctx.report["bitwidths"] = report
        return False


    def _measurement_batches(self, graph: Graph, batches: List[Dict[str, np.ndarray]],
                             ctx: PassContext) -> List[Dict[str, np.ndarray]]:
        """The first calibration batches: up to `samples` of them, `sample_values` input
        values and `cache-bytes` of cached activations (at least one batch)."""
        from qcc.sensitivity import activation_bytes

        per = max(sum(int(np.asarray(a).size) for a in batches[0].values()), 1)
        n = max(1, min(self.samples, self.sample_values // per, len(batches)))
        limit = "" if n == len(batches) else "samples" if n == self.samples else "sample-values"
        per_batch = activation_bytes(graph)
        by_memory = max(1, self.cache_bytes // max(3 * per_batch, 1))
        if by_memory < n:
            limit = (f"cache-bytes: one batch's activations are {per_batch / 2**20:.0f} MB "
                     f"and the search keeps three sets (cache-bytes={self.cache_bytes})")
            n = by_memory
        # the driver measures the report's errors on the batches after these, when there are any
        ctx.report["bitwidth_search_batches"] = {"measured": n, "of": len(batches),
                                                 **({"limited_by": limit} if limit else {})}
        return batches[:n]


def tied_layers(layers: Sequence[Node]) -> Dict[str, List[str]]:
    """{first layer: every layer} for layers that share one weight constant (an unrolled
    RNN's time steps all read the same W and R), in graph order. The search takes each such
    group as one layer: one precision for the weight (a time step at int8 and the next in
    float is no choice a user would make), measured once with all its layers quantized
    (PP-OCRv2 rec's two BiLSTMs: 316 of its 353 layers in 4 groups, so 41 measurements
    instead of 353, each ~1 s of model runs)."""
    by_weight: Dict[int, List[str]] = {}
    for n in layers:
        consts = _layer_consts(n)
        if consts is not None:
            by_weight.setdefault(id(consts[0]), []).append(n.name)
    return {names[0]: names for names in by_weight.values() if len(names) > 1}


CANCELS = 2.0  # a layer's own noise over this many times the model's: not additive (spend_a16)


def _measured_worse(before: np.ndarray, after: np.ndarray, margin_db: float, t: float = 2.0) -> bool:
    """Whether going from per-sample output noises `before` to `after` made the output
    worse beyond chance: with 3 samples or more, a paired t statistic over `t`; with fewer
    (a detector's search measures 2 images), the whole change past `margin_db`. One
    whole-model SQNR over a few dozen samples is set by the few the model is unsure of, so
    on PP-OCR cls it called raises worse that were better held out; a change most samples
    agree on is what it means, as on ddddocr's detector, where one layer's 8-bit error
    cancels another's (its 16-bit or float input measured 3.6 dB worse on held-out images)."""
    d = after - before
    n = len(d)
    if n < 3:
        return _db_change(before, after) < -margin_db
    if float(np.mean(d)) <= 0:
        return False
    sd = float(np.std(d, ddof=1))
    return sd == 0 or float(np.mean(d)) / (sd / math.sqrt(n)) > t


def _db_change(before: np.ndarray, after: np.ndarray) -> float:
    """The output SQNR change (dB) from per-sample noises `before` to `after`."""
    return 10 * math.log10(max(float(np.sum(before)), 1e-300) / max(float(np.sum(after)), 1e-300))


def _power(db: float) -> float:
    """A signal-to-noise ratio in dB as the noise's relative power."""
    return 10 ** (-db / 10)


class _Search:
    """The state of one search: decisions, their predicted size, measured sensitivities.

    Its unit is a layer or a group of layers sharing their weights (tied_layers), named by
    the group's first layer: a decision for it is made for every member."""

    def __init__(self, p: AssignBitwidths, graph, ctx, layers, by_name, decisions, report, pinned,
                 layer_macs, samples, size_budget):
        self.p, self.graph, self.ctx = p, graph, ctx
        self.by_name, self.decisions, self.report = by_name, decisions, report
        free = [n for n in layers if n.name not in pinned and n.op in QUANTIZABLE]
        self.members = tied_layers(free)
        grouped = {m for names in self.members.values() for m in names[1:]}
        self.free = [n.name for n in free if n.name not in grouped]
        for first, names in self.members.items():
            for m in names:
                report[m]["tied"] = {"layers": len(names), "first": first}
        self.layer_macs = layer_macs
        self.unit_macs = {l: sum(layer_macs[m] for m in self.members.get(l, [l])) for l in self.free}
        self.total_macs = sum(layer_macs.values()) or 1
        self.samples = samples
        self.size_budget = size_budget
        self.fixed = _fixed_bytes(graph, layers)
        self.rounded = ctx.options.get("rounded_weights")  # round-weights{defer=true}'s integers
        self._cache = None
        self.sens: Dict[Tuple[str, str], float] = {}

    # --- measurements ---------------------------------------------------------------------
    def _expand(self, changes: Dict[str, str]) -> Dict[str, str]:
        """A unit's change as a change of every layer in it."""
        return {m: c for l, c in changes.items() for m in self.members.get(l, [l])}

    def _set(self, l: str, choice: str) -> None:
        self.decisions.update(self._expand({l: choice}))

    def size(self, changes: Optional[Dict[str, str]] = None) -> int:
        """Predicted bytes of the constants; a constant several layers read (an unrolled RNN's
        W, one copy in the artifact) counts once per form it takes (float, int8, ...)."""
        d = {**self.decisions, **self._expand(changes or {})}
        counted: Dict[Tuple[int, str], int] = {}
        for l, c in d.items():
            for key, nbytes in _const_bytes(self.by_name[l], c):
                counted.setdefault(key, nbytes)
        return self.fixed + sum(counted.values())

    def release(self) -> None:
        """Drop the cached activations and hand the freed heap back to the system: the
        build that follows would otherwise start from the search's high-water mark
        (measured: BEiT-base kept 3.0 GB after the search, 0.9 GB with this)."""
        from qcc.sensitivity import release_memory

        self._cache = None
        release_memory()

    def cache(self):
        from qcc.sensitivity import FloatCache

        if self._cache is None:
            self._cache = FloatCache(self.graph, self.samples)
        return self._cache

    def _quantized(self) -> Graph:
        """The graph quantized with the current decisions and the deferred weight roundings."""
        from qcc.sensitivity import quantized_copy

        return quantized_copy(self.graph, self.decisions, rounded=self.rounded)

    def output_sqnr(self) -> float:
        """The model's output SQNR with the current decisions; `keep()` makes that run the
        one later candidates reuse."""
        from qcc.sensitivity import output_sqnr

        return output_sqnr(self.cache(), self._quantized(), keep=True)

    def keep(self) -> None:
        self.cache().accept()

    def _sample_noise(self) -> np.ndarray:
        """Each search sample's output noise with the current decisions (qcc.sensitivity
        .sample_noise); the run is kept for keep()."""
        from qcc.sensitivity import sample_noise

        return sample_noise(self.cache(), self._quantized(), keep=True)

    def measure_current(self) -> None:
        """Each free layer alone at its current choice (float layers have no noise to measure)."""
        for c in sorted({self.decisions[l] for l in self.free} - {"float"}):
            self.measure([l for l in self.free if self.decisions[l] == c], c)

    def measure(self, names: List[str], choice: str) -> None:
        """Output SQNR with only that layer at `choice` (the rest float), for each name."""
        from qcc.sensitivity import layer_sensitivity

        todo = [n for n in names if (n, choice) not in self.sens]
        if not todo:
            return
        tied = sum(len(self.members.get(l, [l])) for l in todo)
        self.ctx.progress(f"measuring {len(todo)} layers at {choice}"
                          + (f" ({tied} with the layers tied to them)" if tied != len(todo) else ""))
        for name, db in layer_sensitivity(self.graph, self.cache(), todo, self.ctx.progress, choice,
                                          self.rounded, self.members).items():
            self.sens[(name, choice)] = db
            for m in self.members.get(name, [name]):  # a group's figure is every member's
                r = self.report[m]
                r.setdefault("sensitivity_db_by_choice", {})[choice] = round(db, 2)
                if choice == "int8":
                    r["sensitivity_db"] = round(db, 2)

    def narrow_fraction(self, changes: Dict[str, str]) -> float:
        d = {**self.decisions, **self._expand(changes)}
        narrow = sum(m for l, m in self.layer_macs.items() if self.by_name[l].op in QUANTIZABLE
                     and choice_bits(d[l])[1] == 8 and choice_bits(d[l])[0] != 16)
        return narrow / self.total_macs

    # --- 1. the size budget -----------------------------------------------------------------
    def fit_size(self) -> None:
        size, budget = self.size(), self.size_budget
        if size <= budget:
            return
        cands = [l for l in self.free if self.decisions[l] in ("int8", "w8a16", "w16a8", "w16a16", "float")]
        saved = {l: self.size() - self.size({l: self._narrower(l)}) for l in cands}
        cands = [l for l in cands if saved[l] > 0]
        if self.samples:
            self.measure(cands, "int8")
            self.measure(cands, "w4a8")

            def key(l):  # extra noise power (relative) per byte saved; least first
                extra = self._noise(l, "w4a8") - self._noise(l, "int8")
                return max(extra, 0.0) / saved[l], -saved[l]
        else:
            def key(l):  # no data to measure with: the largest layers first
                return -saved[l], l
        for l in sorted(cands, key=key):
            if size <= budget:
                break
            new = self._narrower(l)
            self._set(l, new)
            self.report[l]["why"] = f"size budget: 4-bit weights save {saved[l]} bytes"
            size = self.size()
            self.ctx.progress(f"{l} -> {new}: predicted size {size} bytes")
        if size > budget:
            self.ctx.warn(f"size budget {budget} bytes not met: {size} bytes with every free layer's "
                          f"weights at 4 bits")

    def _narrower(self, l: str) -> str:
        a = choice_bits(self.decisions[l])[1]
        return "w4a16" if a == 16 else "w4a8"

    # --- 2. the error budget ----------------------------------------------------------------
    def meet_error(self, budget: float) -> float:
        """Raise layers until the output SQNR measured on the search's batches meets `budget`;
        returns that measurement as it ends."""
        current = self.output_sqnr()
        self.keep()
        label = "all_int8" if all(c == "int8" for l, c in self.decisions.items()
                                  if _constant_weights(self.by_name[l])) else "start"
        self.ctx.report["predicted_output_sqnr_db"] = {label: round(current, 2)}
        if current >= budget or not self.free:
            self.ctx.report["predicted_output_sqnr_db"]["chosen"] = round(current, 2)
            return current
        self.ctx.progress(f"output SQNR {current:.1f} dB is under the {budget:g} dB budget: "
                          f"measuring {len(self.free)} layers")
        self.measure_current()
        floats = sum(1 for l in self.free if self.decisions[l] == "float")
        tried, blocked = set(), {}
        misses = 0  # raises in a row measured and undone
        while current < budget:
            if self.p.patience and misses >= self.p.patience:
                self.ctx.warn(f"error budget {budget:g} dB not met ({current:.1f} dB): the search stopped "
                              f"after {misses} raises in a row did not pay (the report says why: not_raised)")
                self.ctx.report["bitwidth_search_stopped"] = f"{misses} raises in a row did not pay"
                break
            movable = [l for l in self.free if self.decisions[l] != "float" and l not in tried]
            if not movable:
                stuck = ", ".join(list(blocked)[:4]) + (f" and {len(blocked) - 4} more" if len(blocked) > 4 else "")
                self.ctx.warn(f"error budget {budget:g} dB not met ({current:.1f} dB)"
                              + (f"; could not raise {stuck} (the report says why: not_raised)" if stuck else ""))
                break
            l = max(movable, key=self._noise_per_mac)
            tried.add(l)
            share = self._noise_share(l, current)
            if share < self.p.screen * self._gain_share():
                # no model run: even removing all of its noise would not pass the gain test
                blocked[l] = self.report[l]["not_raised"] = \
                    f"alone it makes {100 * share:.1f}% of the output noise: raising it cannot gain " \
                    f"{self.p.min_gain_db:g} dB"
                continue
            move, why = self._raise(l, budget, floats)
            if move is None:
                blocked[l] = why
                self.report[l]["not_raised"] = why
                continue
            blocked.pop(l, None)
            self.report[l].pop("not_raised", None)
            before = self.decisions[l]
            self._set(l, move)
            now = self.output_sqnr()
            # measured with the rest of the model: undo a move that does not buy a measurable
            # gain -- a float layer costs speed, and when the noise comes from elsewhere
            # (activations between layers) raising layers only spends the int8 share
            if now < current + self.p.min_gain_db:
                self._set(l, before)
                blocked[l] = self.report[l]["not_raised"] = \
                    f"{move} did not pay: output SQNR {current:.1f} -> {now:.1f} dB"
                misses += 1
                continue
            misses = 0
            floats += move == "float"
            self.report[l]["why"] = why
            current = now
            self.keep()
            self.ctx.progress(f"{l}: {before} -> {move}: output SQNR now {current:.1f} dB")
            if move != "float":
                tried.discard(l)  # it may need raising again (to float)
                self.sens[(l, move)] = self.sens.get((l, move), float("inf"))
        self.ctx.report["predicted_output_sqnr_db"]["chosen"] = round(current, 2)
        return current

    # --- 3. a small share of 16-bit activations, by the layers' own noise ---------------------
    def spend_a16(self, share: float, measured_db: float) -> None:
        """Raise to 16-bit activations the layers whose own noise per MAC is largest, while
        their MACs fit in `share` of the model's and each removes at least `a16-min-gain-db`
        of the output noise predicted as the sum of every layer's noise measured alone.

        Why not the whole model's measured output, as the error search uses: on a few
        calibration batches that one number is a draw, not an estimate. On PP-OCR cls (32
        calibration crops) all-int8 measured 37.1 dB on them and 25.2 dB on 512 others, while
        the layers' own noise added up predicted 30.3 and 25.3 dB; raising any one of its
        first block's layers measured 2-7 dB *worse* on the calibration crops and 0.2-0.9 dB
        better held out. The ranking of the layers by their own noise per MAC, though, came
        out the same on both (the same seven first, in nearly the same order), and raising
        those seven (5.8% of the MACs) took its held-out RMS logit error down 8-24% across
        four calibration sets (docs/equalization.md, "A share of 16-bit activations").

        The sum holds only for noise that does not cancel. A layer whose own noise is more
        than twice the whole model's, as measured, is cancelling others' (ddddocr's detector:
        one head conv alone 19.0 dB, the model 23.7 dB; at 16 bits the model measured 19.3,
        and 21.7 dB against 28.1 held out): it is left as it is. Cancelling pairs can also be
        each quieter than that (a layer of the same detector measured 27.2 dB held out at
        int8, 24.4 at w8a16, 23.6 in float), so each raise is also measured with the rest of
        the model and undone when most samples come out noisier (_measured_worse)."""
        floor = self.int8_floor()
        self.measure_current()
        noise = {l: self._noise(l) for l in self.free if self.decisions[l] != "float"}
        total = sum(noise.values())
        spent = sum(self.unit_macs[l] for l in self.free if choice_bits(self.decisions[l])[1] == 16)
        limit = share * self.total_macs
        before, raised, undone = total, [], []
        enough = self._gain_share(self.p.a16_min_gain_db)
        now = None  # each sample's output noise with the raises so far, measured on first need
        for l in sorted((l for l in noise if self.decisions[l] == "int8"), key=self._noise_per_mac, reverse=True):
            if total <= 0 or noise[l] < enough * total:
                continue  # too quiet to be worth its MACs at 16 bits, whatever it costs
            if spent + self.unit_macs[l] > limit or self.narrow_fraction({l: "w8a16"}) < floor:
                continue
            if noise[l] > CANCELS * _power(measured_db):
                self.report[l]["not_raised"] = (f"a16 share: alone ({self.sens[(l, 'int8')]:.1f} dB) it is noisier "
                                                f"than the whole model ({measured_db:.1f} dB): its noise "
                                                f"cancels others', so it does not add up")
                continue
            self.measure([l], "w8a16")
            after = self._noise(l, "w8a16")
            if total - noise[l] + after > (1 - enough) * total:
                continue  # its noise is the weights', not the activations'
            here = self.sens[(l, "int8")]
            if now is None:
                now = self._sample_noise()
                self.keep()
            self._set(l, "w8a16")
            got = self._sample_noise()
            if _measured_worse(now, got, self.p.min_gain_db):
                self._set(l, "int8")
                self.report[l]["not_raised"] = (
                    f"a16 share: with the rest of the model it made the output noisier on "
                    f"{int(np.sum(got > now))} of {len(got)} samples ({_db_change(now, got):+.1f} dB): "
                    f"its noise cancels others', so it does not add up")
                undone.append(l)
                continue
            self.keep()
            now = got
            self.report[l]["why"] = (f"a16 share: {100 * noise[l] / total:.0f}% of the predicted output "
                                     f"noise ({here:.1f} dB alone at int8, {self.sens[(l, 'w8a16')]:.1f} at w8a16)")
            total += after - noise[l]
            noise[l] = after
            spent += self.unit_macs[l]
            raised.append(l)
        if before > 0:
            self.ctx.report["a16_share"] = {
                "limit": share, "share": round(spent / self.total_macs, 4), "raised": raised,
                "measured_worse": undone,
                "predicted_output_sqnr_db": {"before": round(-10 * math.log10(before), 2),
                                             "after": round(-10 * math.log10(total), 2) if total > 0 else None}}

    def _noise(self, l: str, choice: Optional[str] = None) -> float:
        """The output noise power (relative) of layer `l` alone at `choice` (its current one),
        as measured; 0 when unmeasured or noise-free."""
        return _power(self.sens.get((l, choice or self.decisions[l]), float("inf")))

    def _gain_share(self, db: Optional[float] = None) -> float:
        """The share of the output noise a raise must remove to gain `db` (min-gain-db)."""
        return 1 - _power(self.p.min_gain_db if db is None else db)

    def _noise_share(self, l: str, current_db: float) -> float:
        """The layer's noise on its own (measured with the rest in float) as a share of the
        model's output noise now: with noise that adds up, raising the layer to float removes
        at most that share, a gain of -10·log10(1 - share) dB."""
        alone = self.sens.get((l, self.decisions[l]))
        if alone is None:
            return 1.0
        return _power(alone) / _power(current_db)

    def int8_floor(self) -> float:
        """The least share of MACs left int8: the user's floor, else the pass's own under -O2's
        own error budget (none under a budget the user gave)."""
        if "min_int8_fraction" in self.ctx.options:
            return self.ctx.options["min_int8_fraction"]
        own = self.p.own_floor if "min_sqnr" not in self.ctx.options else 0.0
        return max(self.p.min_int8_fraction, own)

    def _noise_per_mac(self, l: str) -> Tuple[float, float]:
        """The greedy order of the error search: the output noise a layer adds on its own
        (relative power, 10^(-SQNR/10)) per MAC it would take out of int8 -- a knapsack
        ratio, so a small noisy layer is raised before a large, slightly noisier one and
        the int8 share of the MACs stays high. Ties: the noisier layer first."""
        noise = self._noise(l)
        return noise / max(self.unit_macs[l], 1), noise

    def _raise(self, l: str, budget: float, floats: int) -> Tuple[Optional[str], str]:
        """The next precision for the most sensitive layer `l` and why, or (None, why not)."""
        cur = self.decisions[l]
        w, a = choice_bits(cur)
        here = self.sens.get((l, cur))
        alone = f"{here:.1f} dB alone at {cur}" if here is not None else cur
        options = []
        if w == 4:
            options.append(("int8" if a == 8 else "w8a16", f"sensitive ({alone}): back to 8-bit weights"))
        if a == 8 and self.p.a16:
            options.append((f"w{w}a16" if w != 8 else "w8a16", f"sensitive ({alone}): 16-bit activations"))
        if w == 8 and self.p.w16:  # the weights, not the activations, may be what the layer loses (few taps per channel)
            options.append((f"w16a{a}", f"sensitive ({alone}): 16-bit weights"))
        options.append(("float", f"sensitive ({alone}): kept in float"))
        reasons, viable, good, float_ok = [], [], [], None
        for choice, why in options:
            if self.size_budget is not None and self.size({l: choice}) > self.size_budget \
                    and self.size({l: choice}) > self.size():
                reasons.append(f"{choice} is over the size budget")
                continue
            wb, ab = choice_bits(choice)
            if choice == "float" or ab != 8 or wb == 16:
                floor = self.int8_floor()
                if self.narrow_fraction({l: choice}) < floor:
                    reasons.append(f"{choice} takes the int8 MAC share under {floor:g}")
                    continue
            if choice == "float":
                if floats >= self.p.max_float_layers:
                    reasons.append("the float layer limit")
                else:
                    float_ok = (choice, why)
                continue
            self.measure([l], choice)
            got = self.sens[(l, choice)]
            # take an integer option when it alone lands well inside the budget; float otherwise
            better = here is None or got >= here + 3.0  # worth an integer move: at least half the noise gone
            if got >= budget + self.p.headroom and better:
                good.append((got, choice, f"{why} ({got:.1f} dB alone)"))
                continue
            reasons.append(f"{choice} alone only reaches {got:.1f} dB")
            if better:
                viable.append(choice)
        if good:  # the integer option that leaves the least noise
            _, choice, why = max(good)
            return choice, why
        if float_ok:
            return float_ok
        if viable:  # float is out of reach: the best integer option within the budgets still helps
            c = max(viable, key=lambda c: self.sens[(l, c)])
            return c, f"sensitive ({alone}): {c}, float being out of reach ({'; '.join(reasons)})"
        return None, "; ".join(reasons) or "no option"
