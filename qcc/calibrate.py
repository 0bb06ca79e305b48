"""Calibration: stream data through the float graph and choose each activation's range.

Memory stays bounded whatever the number of samples: each observed tensor keeps
an exact min/max and a fixed-size histogram on a symmetric power-of-two grid
[-R, R] that doubles (merging bin pairs) when data falls outside, so the bins of
every batch line up without re-reading earlier data.

Range methods, per tensor:
  minmax      the exact observed extremes
  percentile  the p-th / (100-p)-th percentiles (default p = 99.99)
  entropy     the clipping threshold minimising the KL divergence between the
              clipped and the quantized distributions (TensorRT's method)
  mse         the clipping range minimising expected squared quantization error; with
              `tail` > 0 (insert-observers' default), the error expected on data beyond the
              sample: each side's outermost share of values is modelled as an exponential tail
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .ir.graph import Graph

METHODS = ("minmax", "percentile", "entropy", "mse")
BINS = 4096  # over [-R, R]; even, so bin edges include 0
TAIL_MIN = 16  # values: fewer than this on a side and its tail is the sample's own
TAIL_REACH = 4.0  # a modelled tail lets mse's range reach this many times the extremes


class CalibError(Exception):
    """Calibration data that cannot be used; one line saying why."""


class Observer:
    """Streaming statistics of one tensor."""

    def __init__(self, bins: int = BINS):
        self.bins = bins
        self.hist = np.zeros(bins, np.float64)
        self.R = 0.0
        self.min = np.inf
        self.max = -np.inf
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32).ravel()
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):  # a NaN or an infinity among them
            x = x[np.isfinite(x)]
            if x.size == 0:
                return
            lo, hi = float(x.min()), float(x.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += x.size
        need = max(abs(lo), abs(hi))
        if self.R == 0.0:
            # R > |x| strictly (a power of two), so every value's bin is the same on any wider grid
            self.R = 2.0 ** (np.floor(np.log2(need)) + 1) if need > 0 else 0.0
            if self.R == 0.0:
                self.hist[self.bins // 2] += x.size
                return
        while need >= self.R:
            self._double()
        # the bin of each value: floor(x * bins / 2R) + bins / 2, in one float32 buffer; with
        # bins and R powers of two the product is exact, so a value's bin on a grid twice as
        # wide is exactly its bin here halved (what _double and merge rely on)
        scale = self.bins / (2 * self.R)
        pos = x * np.float32(scale) if scale < 2.0 ** 100 else x.astype(np.float64) * scale
        np.floor(pos, out=pos)
        pos += self.bins // 2
        np.minimum(pos, self.bins - 1, out=pos)
        idx = pos.astype(np.intp)
        if idx.size * 8 < self.bins:
            # a few values (an unrolled LSTM's per-step vectors: most of its 5211 tensors):
            # counted where they fall, not with a pass over every bin; the counts are the
            # same integers either way
            where, count = np.unique(idx, return_counts=True)
            self.hist[where] += count
        else:
            self.hist += np.bincount(idx, minlength=self.bins)

    def merge(self, other: "Observer") -> None:
        """Add another observer's data (same bins): as if its tensors had been updated here.

        Both grids are [-R, R] with R a power of two (or 0: every value 0, counted in the
        middle bin, which is the bin of 0 on any grid), so the narrower one doubles to the
        wider one's R and the histograms add bin for bin."""
        if other.count == 0:
            return
        if other.bins != self.bins:
            raise ValueError(f"observers with {self.bins} and {other.bins} bins do not merge")
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.count += other.count
        hist, R = other.hist, other.R
        if self.R == 0.0:
            self.R = R
        elif R != 0.0:
            while self.R < R:
                self._double()
            if R < self.R:
                other = Observer(self.bins)
                other.hist, other.R = hist.copy(), R
                while other.R < self.R:
                    other._double()
                hist = other.hist
        self.hist += hist

    def _double(self) -> None:
        """Same bins over twice the range: pairs merge into the middle half."""
        h = self.hist[0::2] + self.hist[1::2]
        q = self.bins // 4
        new = np.zeros_like(self.hist)
        new[q:q + h.size] = h
        self.hist = new
        self.R *= 2

    # --- range choice ----------------------------------------------------------------
    def edges(self) -> np.ndarray:
        return np.linspace(-self.R, self.R, self.bins + 1)

    def range(self, method: str = "minmax", percentile: float = 99.99, bits: int = 8,
              tail: float = 0.0) -> Tuple[float, float]:
        if self.count == 0:
            raise CalibError("no finite values observed")
        lo, hi = float(self.min), float(self.max)
        if method == "minmax" or hi <= lo or self.R == 0:
            return lo, hi
        if method == "percentile":
            cdf = np.cumsum(self.hist) / self.hist.sum()
            e = self.edges()
            plo = float(e[np.searchsorted(cdf, (100 - percentile) / 100)])
            phi = float(e[min(np.searchsorted(cdf, percentile / 100) + 1, self.bins)])
            return max(lo, plo) if lo < 0 else lo, min(hi, phi)
        if method == "entropy":
            t = self._kl_threshold(bits)
            return (max(lo, -t) if lo < 0 else lo), min(hi, t)
        if method == "mse":
            return self._mse_range(bits, tail)
        raise CalibError(f"unknown calibration method '{method}' (known: {', '.join(METHODS)})")

    def widened(self, headroom: float) -> Tuple[float, float]:
        """The observed extremes, each side away from zero scaled by `headroom`: the range
        of a 16-bit activation. At 16 bits the grid is fine enough that clipping never pays
        on the calibration data, and the data a model meets later reaches past it: on PP-OCR
        cls, 1024 held-out crops against 32 calibration crops, all-w16a16 with the observed
        extremes agreed with float on 99.61% (RMS error of p(class 0) 0.0161, nearly all of
        it clipping), with 2x them 100% (0.0017), 4x 100% (0.0007); all-w8a16 99.12% ->
        99.61% / 99.51%. Twice costs one of the 16 bits; a wider headroom costs more of the
        resolution the 16 bits are there for (a layer raised to a16 is one whose input the
        8-bit grid was too coarse for)."""
        if self.count == 0:
            raise CalibError("no finite values observed")
        lo, hi = float(self.min), float(self.max)
        return (lo * headroom if lo < 0 else lo), (hi * headroom if hi > 0 else hi)

    def _abs_hist(self) -> np.ndarray:
        h = self.hist
        half = self.bins // 2
        return h[half:] + h[:half][::-1]  # |x| histogram over [0, R]

    def _kl_threshold(self, bits: int) -> float:
        h = self._abs_hist()
        n = h.size
        levels = 2 ** (bits - 1)
        nz = np.nonzero(h)[0]
        last = int(nz[-1]) + 1 if nz.size else n
        best_t, best_kl = last, np.inf
        step = max(1, (last - levels) // 256)  # at most ~256 candidates
        for i in range(min(levels, last), last + 1, step):
            p = h[:i].copy()
            p[-1] += h[i:].sum()
            # quantize the i bins into `levels` groups, spreading each group over its nonzero bins
            idx = (np.arange(i) * levels // i)
            sums = np.bincount(idx, weights=h[:i], minlength=levels)
            nonzero = np.bincount(idx, weights=(h[:i] > 0).astype(np.float64), minlength=levels)
            q = np.where(h[:i] > 0, sums[idx] / np.maximum(nonzero[idx], 1), 0.0)
            ps, qs = p.sum(), q.sum()
            if ps == 0 or qs == 0:
                continue
            p, q = p / ps, q / qs
            m = p > 0
            kl = float(np.sum(p[m] * np.log(p[m] / np.maximum(q[m], 1e-12))))
            if kl < best_kl:
                best_kl, best_t = kl, i
        return best_t * self.R / n

    def _tail(self, centers: np.ndarray, sign: int, share: float) -> Optional[Tuple[float, float]]:
        """What an exponential fitted to one side's outermost `share` of values (sign +1: the
        largest, -1: the most negative) puts past the side's extreme: (how many values, their
        mean excess over it). None when the side holds fewer than TAIL_MIN values. `centers`:
        the bins' centres."""
        h = np.where(centers * sign > 0, self.hist, 0.0)
        mag = centers
        if sign < 0:
            h, mag = h[::-1], -centers[::-1]
        if h.sum() < TAIL_MIN:
            return None
        k = max(TAIL_MIN, share * h.sum())
        beyond = np.cumsum(h[::-1])[::-1]  # values at or past each bin
        j = int(np.nonzero(beyond >= k)[0][-1])
        width = 2 * self.R / self.bins
        u = float(mag[j] - width / 2)  # where the fitted tail starts
        m = float(beyond[j])
        excess = max(float(np.sum(h[j:] * (mag[j:] - u)) / m), width / 2)
        extreme = float(self.max if sign > 0 else -self.min)
        return m * float(np.exp(-(extreme - u) / excess)), excess

    def _mse_range(self, bits: int, tail: float = 0.0) -> Tuple[float, float]:
        """The candidate range of least expected squared error: clipping plus step^2/12.

        With `tail` > 0 the error also counts the values an exponential fitted to each side's
        outermost share of the sample puts past its extreme (about one value's worth for a
        sample from such a tail): the sample's own values all count as they are, so the model
        can only widen a range, and only as far as clipping those unseen values costs more
        than the coarser step. Why: the sample's own tail ends at its extremes, and a few
        calibration samples rarely hold the largest values later inputs bring. On PP-OCR cls,
        mse ranges from 32 crops were up to 2x too narrow for 1024 others (the squeeze-excite
        vectors: their 8-bit error on those crops up to 100x what the held-out optimum gives,
        the wide tensors' 1.2-3x); with the tail modelled at 1%, -O2's RMS logit error on 4096
        held-out crops fell 0.255 -> 0.197 (over four calibration sets 0.240 -> 0.211 on
        average; docs/equalization.md, session 43)."""
        e = self.edges()
        centers = (e[:-1] + e[1:]) / 2
        h = self.hist
        lo0, hi0 = float(self.min), float(self.max)
        levels = 2 ** bits - 1
        sides = [sign for sign in (1, -1) if (hi0 > 0 if sign > 0 else lo0 < 0)] if tail > 0 else []
        tails = [(sign, t) for sign in sides if (t := self._tail(centers, sign, tail)) is not None]
        # fine steps near the extremes, and down to a few bins for far outliers: a tensor
        # whose max is 20x its bulk needs a range of 5% of it, which a linear 30-100% grid misses
        width = 2 * self.R / self.bins
        floor = min(0.3, max(width / max(abs(lo0), abs(hi0)), 1e-6))
        parts = [np.geomspace(floor, 0.3, 64), np.linspace(0.3, 1.0, 71)]
        if tails:
            parts.append(np.geomspace(1.0, TAIL_REACH, 60))
        grid = np.unique(np.concatenate(parts))
        los = lo0 * grid if lo0 < 0 else np.full_like(grid, lo0)
        his = hi0 * grid
        steps = (his - los) / levels
        # A candidate's error, sum(h * (c - clip(c))^2) + step^2/12 * (the count inside), from
        # sums of h, h*c and h*c^2 over the bins below lo (prefix) and above hi (suffix): a
        # few products per candidate instead of a pass over all bins (5x faster per tensor,
        # which counts for an unrolled LSTM's 5211 tensors, two ranges each; the same
        # ranges chosen on every tensor of PP-OCR cls, rec and det)
        weighted = (h, h * centers, h * centers * centers)
        zero = np.zeros(1)
        p0, p1, p2 = (np.concatenate([zero, np.cumsum(a)]) for a in weighted)
        s0, s1, s2 = (np.concatenate([np.cumsum(a[::-1])[::-1], zero]) for a in weighted)
        a = np.searchsorted(centers, los, side="left")  # bins below lo: c < lo
        b = np.searchsorted(centers, his, side="right")  # bins up to hi: c <= hi
        errs = (p2[a] - 2 * los * p1[a] + los * los * p0[a]
                + s2[b] - 2 * his * s1[b] + his * his * s0[b]
                + steps * steps / 12 * (p0[b] - p0[a]))
        for sign, (m, excess) in tails:
            # the unseen values V = extreme + Exponential(excess): E[(V - r)^2] past r, and the
            # step's error for those inside
            r = his if sign > 0 else -los
            d = (hi0 if sign > 0 else -lo0) - r
            past = np.exp(np.minimum(d, 0) / excess)  # P(V > r) where r >= the extreme
            errs = errs + m * np.where(d > 0, d * d + 2 * d * excess + 2 * excess * excess,
                                       past * 2 * excess * excess + (1 - past) * steps * steps / 12)
        errs[~(steps > 0)] = np.inf
        i = int(np.argmin(errs))  # the first of equal errors, as a loop over them keeps
        return (float(los[i]), float(his[i])) if errs[i] < np.inf else (lo0, hi0)


# --- calibration data -------------------------------------------------------------------

UNNAMED = "arr_0"  # what np.savez(f, x) calls an array given without a name


def _calib_files(path: Path) -> List[Path]:
    """The files of a --calib path: the .npz itself, or a folder's .npz/.npy files."""
    return sorted(path.glob("*.np[yz]")) if path.is_dir() else [path]


def by_input(arrays: Dict[str, Any], inputs: Sequence[str]) -> Dict[str, Any]:
    """`arrays` keyed by model input: with one input, an array saved without a name
    (UNNAMED, and nothing else) serves it -- unambiguous; any other unknown name is left
    for the caller to report as a mistake rather than guessed about."""
    if len(inputs) == 1 and list(arrays) == [UNNAMED] and inputs[0] != UNNAMED:
        return {inputs[0]: arrays[UNNAMED]}
    return arrays


def sample_shapes(path) -> Dict[str, Tuple[int, ...]]:
    """The shape of each calibration array, {name: shape}, read from the .npy headers only
    (the data is not loaded): it fixes a model's dynamic input dims before import. What
    cannot be read is left out; load_samples reports it later, in one line."""
    import zipfile

    def header_shape(fh) -> Tuple[int, ...]:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return tuple(int(d) for d in read(fh)[0])

    out: Dict[str, Tuple[int, ...]] = {}
    files = _calib_files(Path(path))
    for f in files:
        try:
            if f.suffix == ".npy":
                with open(f, "rb") as fh:
                    out.setdefault(f.stem, header_shape(fh))
                continue
            with zipfile.ZipFile(f) as z:
                for info in z.infolist():
                    if info.filename.endswith(".npy"):
                        with z.open(info) as fh:
                            out.setdefault(info.filename[:-4], header_shape(fh))
        except Exception:  # noqa: BLE001 - unreadable: load_samples says why
            continue
    return out


def load_samples(path, graph: Graph, warn: Optional[Callable[[str], None]] = None) -> List[Dict[str, np.ndarray]]:
    """Read `--calib` data (.npz, or a folder of .npz/.npy) and split it into batches
    shaped like the graph's inputs. Bad data is a CalibError, never a crash."""
    path = Path(path)
    arrays: Dict[str, List[np.ndarray]] = {}
    files = _calib_files(path)
    if not files or not all(f.exists() for f in files):
        raise CalibError(f"{path}: no calibration data (expected an .npz or a folder of .npz/.npy files)")
    for f in files:
        try:
            if f.suffix == ".npy":
                got = {f.stem: np.load(f, allow_pickle=False)}
            else:
                with np.load(f, allow_pickle=False) as z:
                    got = {k: z[k] for k in z.files}
            for k, a in got.items():
                if not isinstance(a, np.ndarray):  # an .npz member that is not an .npy array
                    raise ValueError(f"'{k}' is not a numpy array")
                arrays.setdefault(k, []).append(a)
        except Exception as e:  # truncated zips, bad headers, pickles, zlib errors: all unreadable
            why = (str(e).splitlines() or [""])[0] or type(e).__name__
            raise CalibError(f"{f}: cannot read calibration data ({why})") from None
    names = [v.name for v in graph.inputs]
    keyed = by_input(arrays, names)
    if keyed is not arrays and warn is not None:
        warn(f"calibration array '{UNNAMED}' used for the model's only input '{names[0]}'")
    arrays = keyed
    unknown = sorted(set(arrays) - set(names))
    if unknown:
        raise CalibError(f"calibration data has '{unknown[0]}', which is not a model input "
                         f"(inputs: {', '.join(names)})")
    batches = {}
    for v in graph.inputs:
        if v.name not in arrays:
            raise CalibError(f"calibration data has no array for input '{v.name}'")
        b = v.shape[0] if v.shape else 1
        parts = []
        for a in arrays[v.name]:
            if a.ndim == len(v.shape) + 1 and tuple(a.shape[1:]) == v.shape:
                a = a.reshape((-1,) + v.shape[1:]) if v.shape else a
                parts.append(a)
            elif a.ndim == len(v.shape) and tuple(a.shape[1:]) == v.shape[1:]:
                parts.append(a)
            else:
                raise CalibError(f"calibration array '{v.name}' has shape {list(a.shape)}; the input is "
                                 f"{list(v.shape)} (give samples along axis 0)")
        a = np.concatenate(parts, axis=0) if v.shape else np.stack(parts)
        if a.shape[0] == 0:
            raise CalibError(f"calibration array '{v.name}' is empty")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise CalibError(f"calibration array '{v.name}' contains NaN or Inf")
        a = a.astype(v.type.np_dtype, copy=False)
        n = a.shape[0] // b if v.shape else a.shape[0]
        if n == 0:
            raise CalibError(f"calibration array '{v.name}' has {a.shape[0]} samples, fewer than the batch size {b}")
        batches[v.name] = [a[i * b:(i + 1) * b] for i in range(n)]
    count = min(len(x) for x in batches.values())
    return [{k: batches[k][i] for k in batches} for i in range(count)]


def check_samples(samples, graph: Graph) -> List[Dict[str, np.ndarray]]:
    """Calibration batches given in memory (a list of {input name: array}) checked like
    `load_samples` checks files: a CalibError for anything the interpreter would trip on.
    Arrays of another numeric dtype are cast to the input's; a list is updated in place,
    so later users of the same list (the bit-width search) see the cast arrays too."""
    if not isinstance(samples, (list, tuple)) or not samples:
        raise CalibError("no calibration batches (expected a non-empty list of {input name: array})")
    names = [v.name for v in graph.inputs]
    for i, feeds in enumerate(samples):
        if not isinstance(feeds, Mapping):
            raise CalibError(f"calibration batch {i} is a {type(feeds).__name__}, "
                             f"not a dict of input arrays")
        unknown = sorted(set(feeds) - set(names))
        if unknown:
            raise CalibError(f"calibration batch {i} has '{unknown[0]}', which is not a model input "
                             f"(inputs: {', '.join(names)})")
        fixed = {}
        for v in graph.inputs:
            if v.name not in feeds:
                raise CalibError(f"calibration batch {i} has no array for input '{v.name}'")
            a = np.asarray(feeds[v.name])
            if tuple(a.shape) != v.shape:
                raise CalibError(f"calibration batch {i}: '{v.name}' has shape {list(a.shape)}; "
                                 f"the input is {list(v.shape)}")
            if a.dtype.kind not in "biuf":
                raise CalibError(f"calibration batch {i}: '{v.name}' has dtype {a.dtype}, not a number")
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise CalibError(f"calibration batch {i}: '{v.name}' contains NaN or Inf")
            fixed[v.name] = a.astype(v.type.np_dtype, copy=False)
        if any(fixed[k] is not feeds[k] for k in fixed) and isinstance(samples, list):
            samples[i] = fixed
    return list(samples)


def observe(graph: Graph, samples: List[Mapping[str, np.ndarray]], names: List[str],
            progress: Optional[Callable[[str], None]] = None) -> Dict[str, Observer]:
    """Run the float graph on every sample, feeding the named values' observers.

    The batches run side by side (qcc.batches: one BLAS thread each; a multi-threaded BLAS
    per batch run one after another was 7x slower on a busy 2-core machine), each into
    observers of its own, which are merged in sample order: the result does not depend on
    which batch finished first."""
    from .batches import imap_batches, milestone
    from .interp import Interpreter

    samples = check_samples(samples, graph)
    observers = {n: Observer() for n in names}

    def one(feeds) -> Dict[str, Observer]:
        mine = {n: Observer() for n in names}

        class _Calib(Interpreter):
            def on_value(self, value, array):
                ob = mine.get(value.name)
                if ob is not None:
                    ob.update(array)

        _Calib(graph).run(feeds)
        return mine

    for i, mine in enumerate(imap_batches(one, samples)):
        for n, ob in mine.items():
            observers[n].merge(ob)
        if progress and milestone(i + 1, len(samples), 10):
            progress(f"calibrating: {i + 1}/{len(samples)} batches")
    return observers
