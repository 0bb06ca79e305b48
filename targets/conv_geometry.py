"""The geometry of a 2-D convolution, shared by the per-target int8 kernels.

The x86 (VNNI), ARM (sdot) and CUDA (dp4a) qconv lowerings each plan their own
packing and tiling, but all start from the same facts about the conv: shapes,
groups, strides, padding, dilation, the output size, and whether the attributes
describe a 2-D conv at all. They live here once; each target's plan extends
`ConvGeometry` with its own fields (zero point in its domain, tile sizes).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class ConvGeometry:
    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    groups: int
    strides: Tuple[int, int]
    pads: Tuple[int, int, int, int]  # top, left, bottom, right
    dilations: Tuple[int, int]

    @property
    def cg(self) -> int:
        return self.c // self.groups

    @property
    def og(self) -> int:
        return self.o // self.groups

    @property
    def hp(self) -> int:
        return self.h + self.pads[0] + self.pads[2]

    @property
    def wp(self) -> int:
        return self.w + self.pads[1] + self.pads[3]

    @property
    def out_hw(self) -> Tuple[int, int]:
        oh = (self.hp - self.dilations[0] * (self.kh - 1) - 1) // self.strides[0] + 1
        ow = (self.wp - self.dilations[1] * (self.kw - 1) - 1) // self.strides[1] + 1
        return oh, ow

    def fields(self) -> Dict[str, object]:
        """The geometry's fields, to build a target's plan from it: Plan(**g.fields(), ...)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ConvGeometry)}


def conv_geometry(x_shape, w_shape, attrs) -> Optional[ConvGeometry]:
    """The geometry of a 2-D (grouped) conv from the qconv's shapes and attributes, or None
    when they describe something else (rank, groups that don't divide, bad strides/pads,
    an empty output)."""
    if len(x_shape) != 4 or len(w_shape) != 4:
        return None
    n, c, h, w = (int(v) for v in x_shape)
    o, cg, kh, kw = (int(v) for v in w_shape)
    g = int(attrs.get("group", 1))
    if g < 1 or c % g or o % g or c // g != cg:
        return None
    strides = tuple(int(s) for s in (attrs.get("strides") or [1, 1]))
    pads = tuple(int(p) for p in (attrs.get("pads") or [0, 0, 0, 0]))
    dil = tuple(int(d) for d in (attrs.get("dilations") or [1, 1]))
    if len(strides) != 2 or len(pads) != 4 or len(dil) != 2 or min(strides + dil) < 1 or min(pads) < 0:
        return None
    geom = ConvGeometry(n, c, h, w, o, kh, kw, g, strides, pads, dil)
    return geom if min(geom.out_hw) >= 1 else None


# --- 1-D convs as 2-D ones (lowering helpers: cx is targets.lower's context) -----------------

def conv1d_as_2d(cx, x, w, attrs):
    """A 1-D conv's input, weights and attributes as the 2-D conv over a one-row image that
    computes the same sums (N,C,L -> N,C,1,L; O,I,K -> O,I,1,K), or None for other ranks."""
    if len(cx.shape_of(x)) != 3 or len(cx.shape_of(w)) != 3:
        return None
    n, c, length = cx.shape_of(x)
    o, i, k = cx.shape_of(w)
    s, d = attrs.get("strides") or [1], attrs.get("dilations") or [1]
    p = attrs.get("pads") or [0, 0]
    a = {**attrs, "strides": [1, int(s[0])], "dilations": [1, int(d[0])], "pads": [0, int(p[0]), 0, int(p[1])]}
    return cx.emit(cx.reshape(x, [n, c, 1, length])), cx.reshape(w, [o, i, 1, k]), a


def conv_kernel_2d(cx, x, w, attrs, kernel):
    """`kernel(x, w, attrs)` -- a target's 2-D conv kernel, returning its output or None when
    it does not take the conv -- applied to a 2-D conv as it is and to a 1-D one as the
    one-row 2-D conv computing the same sums (conv1d_as_2d), its result back in N,O,L. So
    audio and sequence models' convs take the kernels too: TVM's generic conv1d is
    unscheduled on x86 (Silero VAD's STFT conv, 258 x 256 taps x 5 frames, ran at 8 GMAC/s)."""
    as2d = conv1d_as_2d(cx, x, w, attrs)
    if as2d is None:
        return kernel(x, w, attrs)
    y = kernel(*as2d)
    if y is None:
        return None
    n, o, _, length = cx.shape_of(y)
    return cx.reshape(y, [n, o, length])
