"""round-weights: round each layer's weights to minimise its output error, not each weight's.

`quantize` rounds every weight to the nearest point of its channel's grid. That is the
best choice per weight but not per layer: the errors of one output channel's weights
add up in its output, and a weight rounded up can make up for a neighbour rounded up
too. What matters is the layer's output error on real inputs. For a layer computing
y = W·x (x: the im2col'd input, K values per output of a group), a weight change dW
adds dW·x to the output, whose energy over the calibration inputs X (rows: samples x
positions) is tr(dW H dW^T) with H = X^T X.

Method: GPTQ / Optimal Brain Quantization (Frantar et al. 2022), in numpy. The K
columns of W are rounded one at a time; each column's rounding error is pushed onto the
columns not yet rounded, weighted so the change minimises the quadratic error given the
columns already fixed -- via the Cholesky factor of H^-1 (dampened by 1% of H's mean
diagonal, so a rank-deficient H from few samples stays well posed). Columns go in
decreasing order of H's diagonal (the inputs with the most energy first: "act-order"),
all output channels and groups at once. It is closed-form, one pass over K, fast in
numpy -- the alternative, AdaRound (Nagel et al. 2020: gradient descent on a soft
rounding of the same quadratic loss), needs thousands of iterations per layer for a
similar result, and no autograd here.

The grid is exactly `quantize`'s: symmetric per output channel, scale = max|w| / qmax
with qmax from the layer's weight bits (4, 8 or 16; ctx.options["bitwidths"]). Each
channel's max-|w| weight stays at ±qmax, so `quantize` recomputes the same scale and
its round-to-nearest gives back exactly the integers chosen here; the pass writes float
weights on that grid, and `quantize` needs no change. A channel is left as it was when
`quantize` would change its scale to fit the bias into the int32 accumulator (_fit_bias:
near-dead channels with a real bias), and when the optimised rounding does not pay on
calibration images it was not fitted to (two-fold cross-validation, see round_layer).

The inputs are the float model's activations on --calib data (reference interpreter);
H is accumulated per layer over batches, from at most `max-rows` sampled rows per batch,
so memory is bounded by the layer's K x K. Float inputs, not the integer model's: an
objective with the input's activation rounding in it (argmin ||X̃w'ᵀ - Xwᵀ||², tried)
measured no better on PP-OCR cls and costs three K x K moments per layer.

With `shift-bias=true`, where the layer's bias can take it (conv, gemm), the mean of the
rounding error goes into the bias: Δb = -(Wq - W)·E[x], E[x] the mean im2col row on the
calibration data, and the rounding is chosen for what is left, the error on the inputs' covariance (GPTQ on the
centred H). After a batch-norm fold, a channel that reads a near-constant input computes
a small difference of large terms, and the int8 rounding of its weights alone can ruin
the output; the shift removes most of that error (PP-OCRv2 rec: its first depthwise conv
reads a constant channel, the 1x1 conv after it channels whose mean is ~7 times their
spread, and biases up to 320 times their output's spread cancel the rest; the
all-int8 model's output went 14.5 -> 21.3 dB on 48 held-out crops). Each channel takes
the candidate -- nearest or GPTQ, each with or without the shift -- that does best on
the calibration images it was not fitted to (below).

When it pays (docs/round-weights.md): where weight rounding is a large part of the
error -- 4-bit weights (PP-OCR cls all-w4a8: 75% -> 90% agreement with float), 16-bit
activations (all-w8a16: 98.0% -> 99.75%), weight-only int8 (+8 dB output SQNR) -- and,
run before the bit-width search, w8a8 layers too: with `defer=true` every layer is rounded
for 8-bit weights into ctx.options["rounded_weights"] instead of the graph; `quantize`
applies an entry to a layer decided at 8-bit weights (int8, w8a16), and the search,
which measures its candidates through `quantize`, sees each layer with the weights it
will get, while a layer it keeps in float keeps its float weights. Measured: held-out
output SQNR +1.0 to +8.2 dB on 8 timm models, PP-OCR rec 72% -> 92% int8 MACs. After the
search, the default pass rounds the layers moved to 4 or 16 bits (w8a8 ones only with
`int8=true`; those in the table are left to it). Without calibration data the pass does
nothing. It sits after `propagate-ranges` (the bias-fit check reads the input ranges) and
before `quantize`; before `bias-correct` if both run (that corrects the mean error of the
rounding that will really happen).

Before: %w = const @w : f32[8,3,3,3]       (quantize would round w / scale to nearest)
        %c = qcc.conv(%x.obs, %w, %b) {...}
After:  %w.rw = const @w.rw : f32[8,3,3,3]  (= q * scale, q the optimised integers)
        %c = qcc.conv(%x.obs, %w.rw, %b) {...}
"""
from __future__ import annotations

import contextlib
import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from qcc.batches import imap_batches, in_order_on_a_thread, milestone, single_threaded_blas, workers
from qcc.ir.graph import Graph, Node
from qcc.passes.bias_correct import _bias_of, _correctable, _set_bias
from qcc.ops._common import pad_spatial, windows
from qcc.pass_manager import PassContext
from qcc.passes.quantize import _observed, _output_end, bias_fit_scale, layer_bits
from qcc.passes_registry import Pass, register_pass
from qcc.quantization import params_for_range, quantize_weights, weight_qmax

LAYERS = ("conv", "gemm", "matmul")


# --- which layers, and their weights as rows of output channels ------------------------------

@dataclass
class Layer:
    """One layer to round: its weights as [groups, output channels per group, K] in float64
    (rows = quantize's channels, columns = the im2col'd inputs), their grid, and the
    calibration rows of its input per fold (the rows of even and of odd images): summed
    into H = XᵀX ([2, G, K, K]) once a fold holds K of them, kept as rows until then."""

    node: Node
    bits: int
    W: np.ndarray
    scale: np.ndarray  # [G, R]: quantize's per-channel scale
    frozen: np.ndarray  # [G, R]: channels to leave as they are
    H: Optional[np.ndarray] = None
    held: List[List[np.ndarray]] = field(default_factory=lambda: [[], []])  # per fold: [G, rows, K]
    rows: int = 0
    images: int = 0
    rounded: Optional[np.ndarray] = None  # round_layer's result in the weight's layout (None: nearest)
    # the bias can take the mean of the rounding error (conv, gemm): then the row sums per
    # fold ([2, G, K], float64) and row counts are kept too, and round_layer's per-channel
    # shift of the bias ([G * R], output channel order) lands in bias_delta
    correctable: bool = False
    sums: Optional[np.ndarray] = None
    counts: np.ndarray = field(default_factory=lambda: np.zeros(2))
    bias_delta: Optional[np.ndarray] = None

    def add_sums(self, f: int, X: np.ndarray) -> None:
        """Fold f's row sums and count (the inputs' mean, for the bias correction)."""
        if self.sums is None:
            self.sums = np.zeros((2, X.shape[0], X.shape[2]))
        self.sums[f] += X.sum(1, dtype=np.float64)
        self.counts[f] += X.shape[1]

    def add_rows(self, f: int, X: np.ndarray) -> Optional[np.ndarray]:
        """Hold fold f's rows; once they are K, hand them back (and hold none) for
        `fold_in` (a rank-49 update of a K = 4608 layer's 170 MB H per batch was
        memory-bound, 20x the arithmetic it did)."""
        self.held[f].append(X)
        if sum(x.shape[1] for x in self.held[f]) < X.shape[2]:
            return None
        return self._take(f)

    def _take(self, f: int) -> np.ndarray:
        """Fold f's held rows as one array; none held after."""
        held, self.held[f] = self.held[f], []
        rows = held[0] if len(held) == 1 else np.concatenate(held, axis=1)  # one: no copy
        return rows

    def fold_in(self, f: int, X: np.ndarray) -> None:
        """H[f] += XᵀX."""
        if self.H is None:  # the first product straight into H (a fresh K x K costs page faults)
            np.matmul(X.transpose(0, 2, 1), X, out=self._zeros()[f])
        else:
            self.H[f] += np.matmul(X.transpose(0, 2, 1), X)

    def _fold_held(self, f: int) -> None:
        if self.held[f]:
            self.fold_in(f, self._take(f))

    def _zeros(self) -> np.ndarray:
        if self.H is None:
            G, _, K = self.W.shape
            self.H = np.zeros((2, G, K, K), np.float32)
        return self.H

    def hessians(self) -> np.ndarray:
        """[2, G, K, K]: H per fold, with the rows still held. A layer with fewer rows than
        K (a deep 3x3 conv at 7x7 on few images) holds only its rows until it is rounded,
        so the pass holds one such H per core, not one per layer."""
        self._fold_held(0)
        self._fold_held(1)
        return self._zeros()


def _bias(n: Node) -> Tuple[bool, Optional[np.ndarray]]:
    """(usable, the bias per output channel as quantize folds it, or None without one)."""
    b = n.inputs[2] if len(n.inputs) > 2 else None
    if b is None:
        return True, None
    if not b.is_const:
        return False, None
    d = np.asarray(b.data, np.float64).reshape(-1)
    if n.op == "gemm":
        d = d * float(n.attrs.get("beta", 1.0))
        N = n.output.shape[-1]
        if d.size == 1:
            d = np.full(N, d[0])
        elif d.size != N:
            return False, None  # a full-matrix bias: quantize leaves the layer float
    return True, d


def _as_rows(n: Node) -> Optional[np.ndarray]:
    """The weights as quantize sees them, one row per channel: [G, R, K], or None when
    quantize would not rewrite this layer's weights (not a float constant, a transposed
    input, a scaled gemm, a batched matmul)."""
    w = n.inputs[1]
    if w is None or not w.is_const or w.dtype not in ("f32", "f16", "bf16", "f64"):
        return None
    d = np.asarray(w.data, np.float32).astype(np.float64)
    if n.op == "conv":
        G = int(n.attrs.get("group", 1))
        return d.reshape(G, d.shape[0] // G, -1)
    if d.ndim != 2:
        return None
    if n.op == "gemm":
        if n.attrs.get("trans_a", 0) or float(n.attrs.get("alpha", 1.0)) != 1.0:
            return None
        return (d if n.attrs.get("trans_b", 0) else d.T)[None]
    return d.T[None]  # matmul: x[.., K] @ W[K, N]


def _from_rows(n: Node, rows: np.ndarray) -> np.ndarray:
    """The inverse of _as_rows: [G, R, K] back to the weight constant's layout."""
    if n.op == "conv":
        return rows.reshape(n.inputs[1].shape)
    m = rows[0]
    return m if n.op == "gemm" and n.attrs.get("trans_b", 0) else m.T


def _bias_fit_changes(n: Node, W: np.ndarray, scale: np.ndarray, qmax: int) -> np.ndarray:
    """[G, R] channels whose scale quantize's _fit_bias may raise: those are re-rounded
    there, so rounding them here is wasted. Checked for every activation format the input
    could get (u8, symmetric i8, i16): the smallest input scale is the strictest."""
    _, b = _bias(n)
    if b is None:
        return np.zeros(scale.shape, bool)
    obs = _observed(n.inputs[0])
    if obs is None:  # an input already quantized (a QDQ model): no range to check against
        return np.ones(scale.shape, bool)
    lo, hi = obs[1]
    frozen = np.zeros(scale.shape, bool)
    for dtype, sym, span in (("u8", False, 255), ("i8", True, 254), ("i16", True, 65534)):
        sx = params_for_range(lo, hi, dtype, sym).scale[0]
        frozen |= (bias_fit_scale(b, sx, W.shape[2], span, qmax) > scale.reshape(-1)).reshape(scale.shape)
    return frozen


def layers_to_round(graph: Graph, decisions: Dict[str, str], int8: bool = False, shift_bias: bool = False
                    ) -> Tuple[List[Layer], Dict[str, str]]:
    """The layers `quantize` will rewrite with float weights it quantizes itself (w8a8
    ones only with `int8`), and why the others are skipped."""
    out, skipped = [], {}
    for n in graph.nodes:
        if n.op not in LAYERS:
            continue
        bits = layer_bits(decisions.get(n.name))
        if bits is None:
            skipped[n.name] = "float"
            continue
        if bits == (8, 8) and not int8:
            skipped[n.name] = "w8a8 (int8=false)"
            continue
        W = _as_rows(n)
        if W is None or not _bias(n)[0]:
            skipped[n.name] = "weights not a float constant quantize rounds"
            continue
        if len(n.inputs[1].uses) != 1:
            skipped[n.name] = "weights shared with another layer"
            continue
        p = n.inputs[0].producer
        if _output_end(n, graph) is None or (_observed(n.inputs[0]) is None
                                             and (p is None or p.op != "dequantize")):
            skipped[n.name] = "quantize leaves it float (no observed input/output)"
            continue
        qmax = weight_qmax(bits[0])
        G, R, K = W.shape
        scale = quantize_weights(W.reshape(G * R, K), 0, bits[0])[1].reshape(G, R)  # quantize's grid
        frozen = (np.abs(W).max(2) == 0) | _bias_fit_changes(n, W, scale, qmax)
        out.append(Layer(n, bits[0], W, scale, frozen, correctable=shift_bias and _correctable(n)))
    return out, skipped


# --- the calibration inputs ---------------------------------------------------------------

def _input_rows(n: Node, x: np.ndarray, idx: np.ndarray) -> Tuple[np.ndarray, int]:
    """The layer's input as im2col rows per group, the rows `idx` of all N*positions (see
    _row_count): ([G, rows, K] float32, positions per image). Only the sampled windows are
    gathered: a stem conv's full im2col is hundreds of MB for the 4096 rows kept."""
    if n.op != "conv":
        X = x.reshape(1, -1, x.shape[-1])
        per_image = max(X.shape[1] // max(x.shape[0], 1), 1)
        return X[:, idx].astype(np.float32), per_image
    r = x.ndim - 2
    a = n.attrs
    k = n.inputs[1].shape[2:]
    pads = a.get("pads") or [0] * (2 * r)
    xp = pad_spatial(x, pads[:r], pads[r:])
    win = windows(xp, k, a.get("strides") or [1] * r, a.get("dilations") or [1] * r)  # N,C,*out,*k (a view)
    N = win.shape[0]
    out = win.shape[2:2 + r]
    b, *o = np.unravel_index(idx, (N, *out))
    patches = win[(b, slice(None), *o)]  # rows, C, *k
    G = int(a.get("group", 1))
    X = patches.reshape(len(idx), G, -1).transpose(1, 0, 2).astype(np.float32, copy=False)  # copied per fold
    return X, int(np.prod(out))


def _row_count(n: Node) -> int:
    """The rows of layer n's input per batch that _input_rows samples from: N*positions for a
    conv (its output's), every vector along the last axis for a gemm/matmul."""
    if n.op == "conv":
        out = n.outputs[0].shape
        return int(out[0] * np.prod(out[2:]))
    return int(np.prod(n.inputs[0].shape[:-1]))


def _sample(total: int, max_rows: int, rng) -> np.ndarray:
    if max_rows and total > max_rows:
        return np.sort(rng.choice(total, max_rows, replace=False))
    return np.arange(total)


def accumulate_hessians(graph: Graph, layers: List[Layer], samples, max_rows: int, seed: int = 0,
                        progress: Optional[Callable[[str], None]] = None) -> None:
    """H += XᵀX per layer, fold and batch, from the float model's activations (one run per
    batch; at most `max_rows` rows of X per batch, sampled without replacement)."""
    from qcc.interp import Interpreter

    by_input: Dict[str, List[Layer]] = {}
    for l in layers:
        by_input.setdefault(l.node.inputs[0].name, []).append(l)
    # each batch's rows drawn from the one stream as the batch starts (imap_batches starts
    # them in order), in the order a run produces the layers' inputs (the shapes are the
    # graph's): the batches then run side by side and sample exactly what one loop over
    # them would, and only the batches in flight hold their draws
    produced = [v.name for v in graph.inputs] + [o.name for n in graph.nodes for o in n.outputs]
    draws = [l for name in produced for l in by_input.get(name, ())]
    rng = np.random.default_rng(seed)

    def batches():
        for feeds in samples:
            yield feeds, [_sample(_row_count(l.node), max_rows, rng) for l in draws]

    def sampled(item):
        """One batch's float run, kept only as each layer's sampled rows."""
        feeds, picks = item
        todo = iter(picks)
        got = []

        class _Rows(Interpreter):
            def on_value(self, value, array):
                for l in by_input.get(value.name, ()):
                    idx = next(todo)
                    X, per_image = _input_rows(l.node, array, idx)
                    got.append((l, X, idx // per_image, array.shape[0]))

        _Rows(graph).run(feeds)
        return got

    # the float runs on every core; each layer's products summed into its H in batch order
    # on one of as many more threads, so every H is the same sum, in the same order, as one
    # loop's. The products are most of the work: XᵀX over 4096 rows of K = 864 is 6 GFLOP
    # a batch. PP-OCR det's round-weights{defer=true} on 2 cores, A/B medians of 3
    # interleaved runs: 11.3 -> 9.6 s and 8.6 -> 7.8 s against one run, one sampling and
    # one products thread (the float runs alone are 2.6 s of it)
    with contextlib.ExitStack() as stack:
        shards = [stack.enter_context(in_order_on_a_thread(Layer.fold_in, depth=2)) for _ in range(workers())]
        shard = {id(l): shards[k % len(shards)] for k, l in enumerate(layers)}

        def fold(l, f, X):
            shard[id(l)](l, f, X)

        for b, got in enumerate(imap_batches(sampled, batches(), len(samples))):
            if progress and milestone(b + 1, len(samples), 10):
                progress(f"round-weights: statistics of {b + 1}/{len(samples)} batches")
            for l, X, image_in_batch, n in got:
                image = l.images + image_in_batch  # counted over all batches
                for f in (0, 1):
                    mine = image % 2 == f
                    if not mine.any():  # batches of one image: each batch is one fold's
                        continue
                    Xf = X if mine.all() else X[:, mine]
                    if l.correctable:
                        l.add_sums(f, Xf)
                    full = l.add_rows(f, Xf)
                    if full is not None:
                        fold(l, f, full)
                l.rows += image_in_batch.size
                l.images += n


# --- the rounding ---------------------------------------------------------------------

def output_error(Wn: np.ndarray, W: np.ndarray, H: np.ndarray) -> np.ndarray:
    """[G, R]: each channel's output error energy tr(dW H dWᵀ) on the calibration rows."""
    D = Wn - W
    return np.einsum("grk,grk->gr", np.matmul(D.astype(H.dtype), H), D)  # (3-operand einsum: 20x slower)


def nearest(W: np.ndarray, scale: np.ndarray, qmax: int) -> np.ndarray:
    """quantize's rounding: [G, R, K] integers."""
    return np.clip(np.rint(W / scale[..., None]), -qmax, qmax)


def cholesky_lower(A: np.ndarray, block: int = 256) -> np.ndarray:
    """The lower Cholesky factor of each symmetric positive definite [K, K] of A [G, K, K]
    (float32), computed in place: its lower triangle, the upper one left as it was. Blocked,
    so its time goes to matrix products: numpy's own float32 factor took 2.2 s at
    K = 4608 on one core, this one 0.6 s (a GPTQ solve of ResNet-18's last 3x3 convs
    factors three). Raises LinAlgError when A is not numerically positive definite."""
    G, K, _ = A.shape
    # one buffer for every trailing update (fresh arrays of this size cost page faults: see
    # the note in gptq)
    buf = np.empty(G * max(K - block, 0) ** 2, A.dtype)
    for k0 in range(0, K, block):
        k1 = min(k0 + block, K)
        Lkk = np.linalg.cholesky(A[:, k0:k1, k0:k1])
        A[:, k0:k1, k0:k1] = Lkk
        if k1 < K:
            panel = np.matmul(A[:, k1:, k0:k1], np.linalg.inv(Lkk).transpose(0, 2, 1))
            A[:, k1:, k0:k1] = panel
            n = K - k1
            update = np.matmul(panel, panel.transpose(0, 2, 1), out=buf[:G * n * n].reshape(G, n, n))
            A[:, k1:, k1:] -= update
    return A


def gptq(W: np.ndarray, H: np.ndarray, scale: np.ndarray, qmax: int, pinned: np.ndarray,
         damp: float = 0.01, block: int = 32) -> np.ndarray:
    """[G, R, K] integers minimising tr(dW H dWᵀ) column by column (GPTQ, act-order).

    `pinned` ([G, R, K], one per channel) holds each channel's max-|w| weight, kept at
    ±qmax: the grid's scale depends on it.

    GPTQ pushes column i's rounding error onto the later columns through U, the upper
    Cholesky factor of H^-1. With H = R Rᵀ (R upper, so U = R^-1), the weight column i
    is rounded from after all the earlier pushes is W_i + Σ_{j<i} D_j R_ji / R_ii, where
    D = W - Q·scale are the rounding errors already made: one Cholesky factor, no
    inverse (in float64 the same integers as the H^-1 form, 3x faster on K = 1536..2304
    layers). The factor is taken in float32, which halves its memory: at K = 4608, 0.3%
    of the integers then differ, at 0.9996x the output error (blocked, cholesky_lower:
    7% differ, at 0.99-1.04x). The sum runs in blocks (GPTQ's lazy batches): one matrix
    product per block of columns, rank-1 updates inside it; blocks of 32 columns, not
    128, do a quarter of the rank-1 work (BEiT-base's layers: a third faster, the same
    integers)."""
    G, R, K = W.shape
    order = np.argsort(-np.diagonal(H, axis1=1, axis2=2), axis=1, kind="stable")  # [G, K]
    gi = np.arange(G)[:, None, None]
    rev = order[:, ::-1]
    Wp = np.take_along_axis(W, order[:, None, :], axis=2)
    pin = np.take_along_axis(pinned, order[:, None, :], axis=2)
    diag = np.arange(K)
    for _ in range(6):  # more damping while H is not numerically positive definite
        # H in act-order, reversed (for the upper factor below), as one new array: a K = 4608
        # layer's H is 170 MB, and each fresh copy cost a second of page faults here
        Hr = H[gi, rev[:, :, None], rev[:, None, :]].astype(np.float32, copy=False)
        Hr[:, diag, diag] += (damp * np.maximum(Hr[:, diag, diag].mean(1), 1e-12))[:, None]
        try:
            # upper R with H = R Rᵀ: the lower factor of H with its order reversed, reversed back
            Rt = cholesky_lower(Hr)[:, ::-1, ::-1]
            break
        except np.linalg.LinAlgError:
            damp *= 10
    else:
        return nearest(W, scale, qmax)
    rd = np.diagonal(Rt, axis1=1, axis2=2)  # [G, K]
    # columns as rows ([G, K, R]): each step below reads and writes contiguous memory
    WT = np.ascontiguousarray(Wp.transpose(0, 2, 1))
    pinT = np.ascontiguousarray(pin.transpose(0, 2, 1))
    pinned_col = pinT.any(axis=2)  # [G, K]
    QT = np.empty_like(WT)
    DT = np.empty(WT.shape, np.float32)
    for b0 in range(0, K, block):
        b1 = min(b0 + block, K)
        push = (np.matmul(Rt[:, :b0, b0:b1].transpose(0, 2, 1), DT[:, :b0]) if b0
                else np.zeros((G, b1 - b0, R), np.float32))  # [G, B, R]
        for i in range(b0, b1):
            w = WT[:, i] + push[:, i - b0] / rd[:, i, None]
            q = np.clip(np.rint(w / scale), -qmax, qmax)
            if pinned_col[:, i].any():
                q = np.where(pinT[:, i], np.sign(w) * qmax, q)
            QT[:, i] = q
            DT[:, i] = d = WT[:, i] - q * scale
            if i + 1 < b1:
                push[:, i + 1 - b0:] += Rt[:, i, i + 1:b1, None] * d[:, None, :]
    Q = QT.transpose(0, 2, 1)
    return np.take_along_axis(Q, np.argsort(order, axis=1)[:, None, :], axis=2)


def centred(H: np.ndarray, S: np.ndarray, n: float, m: np.ndarray) -> np.ndarray:
    """Σ (x - m)(x - m)ᵀ over rows whose Σ xxᵀ is H and Σ x is S ([G, K, K], float32):
    the quadratic form of a weight change's output error once the bias takes its mean at
    m. In float64 up to 4M entries: where an input is mostly its mean, H's entries nearly
    cancel here, and such layers are small (a depthwise conv's K = 9); a transformer's
    K = 3072 would take 75 MB a copy."""
    dt = np.float64 if H.size <= 1 << 22 else np.float32
    out = H.astype(dt)
    S, m = S.astype(dt), m.astype(dt)
    out -= S[:, :, None] * m[:, None, :] + m[:, :, None] * S[:, None, :] - dt(n) * m[:, :, None] * m[:, None, :]
    return out.astype(np.float32, copy=False)


def round_layer(l: Layer, damp: float) -> Dict:
    """Choose the integers of one layer, and the shift of its bias; write them as float
    weights on the grid (l.rounded) and l.bias_delta. Returns its report entry.

    Per channel, up to four candidates: nearest, GPTQ, and -- where the bias can take it
    (l.correctable) -- each with the bias shifted by the mean of its error, -(Wq - W)·E[x].
    The shift removes the part of the error that the inputs' mean carries, which is most
    of it where an input is mostly its mean: after a batch-norm fold, a channel whose
    output is a large constant nearly cancelled by its bias (PP-OCRv2 rec's first
    depthwise conv reads a constant channel: at int8, its weights alone took the model's
    output to 10 dB). GPTQ then rounds for the rest, the inputs' covariance.

    A channel takes a candidate other than nearest only if it also pays on data it was not
    fitted to: fitted (rounding and mean) on the even images, measured on the odd ones,
    and the other way round (two-fold cross-validation): the one with the least held-out
    error, if it beats nearest there and on all the data. Few rows against a large K (a
    squeeze-excite layer sees one row per image) let the fit follow the calibration set's
    noise; the check rejects what does not carry over."""
    qmax = weight_qmax(l.bits)
    W = l.W
    pinned = np.zeros(W.shape, bool)
    np.put_along_axis(pinned, np.abs(W).argmax(2)[..., None], True, axis=2)
    sign = np.sign(W)
    near = nearest(W, l.scale, qmax) * l.scale[..., None]

    # H is float32 (summed so too): the products below are K x K (K = 3072 for a
    # transformer's fc2), twice as fast and half the memory; the weights and their grid
    # stay float64
    H0, H1 = l.hessians()
    H = H0 + H1

    def solve(Hfit):
        Q = gptq(W, Hfit, l.scale, qmax, pinned, damp)
        return np.where(pinned, sign * qmax, Q) * l.scale[..., None]

    # candidates: (weights, held-out error [G, R], error on all the data [G, R], mean of the inputs or None)
    held_near = output_error(near, W, H1) + output_error(near, W, H0)
    e_near = output_error(near, W, H)
    cands = [(near, held_near, e_near, None)]
    opt = solve(H)
    cands.append((opt, output_error(solve(H0), W, H1) + output_error(solve(H1), W, H0),
                  output_error(opt, W, H), None))
    if l.correctable and l.sums is not None and (l.counts > 0).all():
        (S0, S1), (n0, n1) = l.sums, l.counts
        m0, m1, m = S0 / n0, S1 / n1, (S0 + S1) / (n0 + n1)
        H1_0, H0_1, Hc = centred(H1, S1, n1, m0), centred(H0, S0, n0, m1), centred(H, S0 + S1, n0 + n1, m)
        cands.append((near, output_error(near, W, H1_0) + output_error(near, W, H0_1),
                      output_error(near, W, Hc), m))
        optc = solve(Hc)
        cands.append((optc, output_error(solve(centred(H0, S0, n0, m0)), W, H1_0)
                      + output_error(solve(centred(H1, S1, n1, m1)), W, H0_1), output_error(optc, W, Hc), m))
    held = np.stack([c[1] for c in cands])  # [candidates, G, R]
    pick = held.argmin(0)
    e_pick = np.take_along_axis(np.stack([c[2] for c in cands]), pick[None], 0)[0]
    ok = (np.take_along_axis(held, pick[None], 0)[0] < held_near * (1 - 1e-9)) \
        & (e_pick < e_near * (1 - 1e-9)) & ~l.frozen
    pick = np.where(ok, pick, 0)
    chosen = W.copy()  # nearest: left to quantize
    delta = np.zeros(W.shape[:2])
    for k, (Wk, _, _, mean) in enumerate(cands[1:], 1):
        mine = pick == k
        if not mine.any():
            continue
        if Wk is not near:
            chosen[mine] = Wk[mine]
        if mean is not None:
            delta[mine] = np.einsum("grk,gk->gr", W - Wk, mean)[mine]
    moved = (pick > 0) & np.array([c[0] is not near for c in cands])[pick]
    l.rounded = _from_rows(l.node, chosen) if moved.any() else None
    l.bias_delta = delta.reshape(-1) if (delta != 0).any() else None
    energy = float(output_error(W, 0.0, H).sum()) or 1.0
    en, eo = float(e_near.sum()), float(np.where(pick > 0, e_pick, e_near).sum())
    # held out, the fullest method (the last candidate) over every channel it could round
    # (unselected: selecting by it would flatter)
    hn, ho = float(held_near[~l.frozen].sum()), float(held[-1][~l.frozen].sum())
    l.H = l.sums = None  # done with them: the pass then holds one H per core, not one per layer
    return {"weight_bits": l.bits, "rows": l.rows, "channels_changed": int(moved.sum()),
            "channels": int(pick.size), "bias_corrected_channels": int((delta != 0).sum()),
            "nearest_rel_error": _sig(en / energy),
            "rounded_rel_error": _sig(eo / energy), "reduction_db": _db(en, eo),
            "held_out_reduction_db": _db(hn, ho)}


def write_weights(n: Node, arr: np.ndarray) -> None:
    """Give layer `n` the weights `arr` (on its grid) as a new `.rw` constant."""
    old = n.inputs[1]
    arr = arr.astype(old.data.dtype, copy=False)
    name = old.name if old.name.endswith(".rw") else old.name + ".rw"
    graph = n.graph
    c = graph.add_const(name, arr, old.dtype)
    n.set_input(1, c)
    if not old.uses and old not in graph.outputs:
        graph.remove_const(old)
        if c.name != name and not graph.has_value(name):  # run twice: keep the name
            graph.rename(c, name)


ROUNDED = "rounded_weights"  # ctx.options key of the roundings chosen before the bit-width search


def apply_rounded_weights(graph: Graph, decisions: Dict[str, str], table: Dict) -> List[str]:
    """Give each layer decided at the weight bits `round-weights{defer=true}` rounded it for
    the weights it chose (`table`: {layer: (weight constant's name, bits, array or None,
    bias shift or None)}), as long as the layer still reads that constant. `quantize` calls
    this, so does the bit-width search for each candidate it measures: a layer the search keeps in float keeps its
    float weights. Returns the layers changed."""
    done = []
    for n in list(graph.nodes):  # (a layer given a bias is a new node)
        entry = table.get(n.name)
        if entry is None or n.op not in LAYERS:
            continue
        name, bits, arr, delta = entry
        b = layer_bits(decisions.get(n.name))
        w = n.inputs[1]
        if b is None or b[0] != bits or w is None or w.name != name or not w.is_const \
                or (arr is not None and tuple(w.shape) != arr.shape):
            continue
        _write(n, arr, delta)
        done.append(n.name)
    return done


def _write(n: Node, arr: Optional[np.ndarray], bias_delta: Optional[np.ndarray]) -> None:
    """The layer's weights `arr` (on its grid; None: as they are), and its bias shifted by
    `bias_delta`."""
    if arr is not None:
        write_weights(n, arr)
    if bias_delta is not None:
        _set_bias(n, _bias_of(n) + bias_delta, n.graph)


def _db(before: float, after: float) -> float:
    return round(float(10 * np.log10(before / after)), 2) if before > 0 and after > 0 else 0.0


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


@register_pass
@dataclass(frozen=True)
class RoundWeights(Pass):
    """Choose each layer's weight rounding to minimise its output error on calibration data (GPTQ)."""

    name = "round-weights"
    requires = frozenset({"ranged"})
    samples: int = 0  # calibration batches used (0: all)
    max_rows: int = 4096  # rows of each layer's im2col input sampled per batch
    damp: float = 0.01  # H's dampening, relative to its mean diagonal
    exclude: str = ""  # 'glob;glob' of layer names left to round-to-nearest
    # also w8a8 layers: measured a wash on PP-OCR cls/det and digits, where 8-bit
    # activation rounding dominates (docs/round-weights.md)
    int8: bool = False
    # round every layer at 8-bit weights before the bit-width search, into a table
    # (ctx.options["rounded_weights"]) that the search's measurements and `quantize` apply
    # to the layers decided at 8-bit weights; the graph keeps its float weights
    defer: bool = False
    # also shift each channel's bias by the mean of its rounding error, rounding for the
    # rest (see the module docstring). Off by default: a layer-level gain everywhere
    # (held-out error 12-18 dB lower on PP-OCRv2 rec's first layers), but with it the
    # bit-width search finds 16-bit activations pay more often, and spends the int8 share:
    # PP-OCR det -O2 went 96% -> 72% int8 MACs, 0.61 -> 0.81x qcc float's latency (more
    # accurate: IoU 0.890 -> 0.979); measured on 8 other models: docs/round-weights.md
    shift_bias: bool = False

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        samples = ctx.options.get("calib")
        decisions = ctx.options.get("bitwidths", {})
        key = "round_weights_before_search" if self.defer else "round_weights"
        if not (isinstance(samples, list) and samples):
            # a warning only when there was something to round: in -O2 without --calib the
            # data-free ranges already say so, and all-int8 layers are not rounded anyway
            choices = set(decisions.values())
            if not self.defer and (self.int8 or choices - {"int8", "float"}):
                ctx.warn("no calibration data (--calib): round-weights left the weights to "
                         "round-to-nearest")
            ctx.report[key] = {"method": "none (no calibration data)"}
            return False
        table = ctx.options.get(ROUNDED, {})
        layers, skipped = layers_to_round(graph, {} if self.defer else decisions, self.int8 or self.defer,
                                          self.shift_bias)
        pats = [p for p in self.exclude.split(";") if p]
        for l in list(layers):
            if any(fnmatch.fnmatchcase(l.node.name, p) for p in pats):
                skipped[l.node.name] = "excluded"
            elif not self.defer and l.bits == table.get(l.node.name, (None, None))[1]:
                skipped[l.node.name] = "rounded before the bit-width search"
            else:
                continue
            layers.remove(l)
        if not layers:  # the default -O2 on an all-int8 model: no float run for nothing
            ctx.report[key] = {"method": "gptq", "layers": {}, "skipped": skipped,
                               "mean_held_out_reduction_db": 0.0}
            return False
        ctx.progress(f"round-weights: {len(layers)} layers")
        # BLAS on one thread, the layers' rounding side by side: the matrices here are small
        # (K x K, K ~ 10..2000), and on a busy machine a multi-threaded Cholesky of one
        # 200 x 200 matrix was measured 100x slower
        with single_threaded_blas():
            accumulate_hessians(graph, layers, samples[: self.samples or None], self.max_rows,
                                progress=ctx.progress)
            fitted = [l for l in layers if l.rows]  # layers are independent: one per core
            report = {}
            # every layer may start at once (the results are small): their costs differ 100x
            rounded = imap_batches(lambda l: round_layer(l, self.damp), fitted, ahead=len(fitted))
            for k, (l, r) in enumerate(zip(fitted, rounded)):
                report[l.node.name] = r
                if milestone(k + 1, len(fitted), 4):
                    ctx.progress(f"round-weights: rounded {k + 1}/{len(fitted)} layers")
        changed = False
        for l in layers:
            if l.rounded is None and l.bias_delta is None:
                continue
            if self.defer:
                # in the constant's dtype: applied to every candidate the search measures,
                # as is, without a copy per candidate
                w = l.node.inputs[1]
                arr = None if l.rounded is None else l.rounded.astype(w.data.dtype)
                table[l.node.name] = (w.name, l.bits, arr, l.bias_delta)
            else:
                _write(l.node, l.rounded, l.bias_delta)
                changed = True
        if self.defer:
            ctx.options[ROUNDED] = table
        ctx.report[key] = {
            "method": "gptq", "layers": report, "skipped": skipped,
            "mean_held_out_reduction_db": round(float(np.mean(
                [r["held_out_reduction_db"] for r in report.values()])), 2) if report else 0.0}
        return changed
