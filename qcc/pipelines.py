"""The named pipelines behind -O0 … -O3, in one place, as plain pipeline text.

`qcc compile --print-pipeline` prints the text a run used, so any run can be
replayed with `--passes`. Each step sits where it does for a reason:
promote-f16 first (a no-op on float32 models: a half-precision one computes in float32, so
the integer code's float seams need no casts); canonicalize next so every later pattern sees folded constants and no no-ops;
fuse before observing so observers sit on the tensors that will really exist;
equalize after fuse (it rescales the folded weights, and reads the batch-norm
statistics fuse keeps) and before observing (the observers must see the rescaled
channels); smooth after equalize (it balances what equalize could not reach: the tensors
after a nonlinearity, measured with equalize's scales in place) and, for the same reason,
before observing; align-input-grid just before observing (it fixes an 8-bit input's range
to the input's own grid with an observe op of its own, which insert-observers keeps, and any
shift it makes goes into biases the passes before it have already rescaled); bias-correct,
when used, after the bit widths are chosen (it quantizes a copy exactly as quantize will)
and before quantize (the correction is a float bias);
ranges before bit widths, bit widths before quantize; round-weights on both sides of the
search: before it, {defer=true} rounds every layer for 8-bit weights into a table that
quantize applies, so the search measures each layer with the weights it will get (and a
layer it keeps in float keeps its float weights); after it, the layers moved to 4 or 16
bits are rounded on their own grids (docs/round-weights.md); folding requantize last,
once every quantize/dequantize pair is in place.
"""

PIPELINES = {
    # import and lower in float: only semantics-preserving clean-up
    "O0": "canonicalize",
    # float activations, int8 weights: no calibration data needed
    "O1": "promote-f16,canonicalize,fuse,quantize-weights,quantize-embeddings,canonicalize",
    # the static int8 pipeline; cross-layer equalization is data-free and cheap
    "O2": "promote-f16,canonicalize,fuse,quantize-embeddings,equalize,smooth,align-input-grid,insert-observers,propagate-ranges,round-weights{defer=true},assign-bitwidths,round-weights,quantize,"
          "fold-requantize,canonicalize",
    # O2's observers took percentile ranges until 2026-12-05 and mse since (insert_observers.py
    # says why); this recipe is mse without smooth, whose error measure assumes percentile
    # ranges (on PP-OCR cls, -O3 with it flipped 4 of 208 crops, 1 without: docs/equalization.md)
    # (bias-correct is not in: on PP-OCR cls it measured neutral to harmful, see
    # docs/equalization.md; nor round-weights{defer=true}: with -O3's mse ranges it cost
    # 0.9 dB on 640 PP-OCR cls crops, docs/round-weights.md); -O3 also tunes the kernels
    # in the back end (targets/tune.py: --tune-budget, --tune-db)
    "O3": "promote-f16,canonicalize,fuse,quantize-embeddings,equalize,align-input-grid,insert-observers{method=mse},propagate-ranges,"
          "assign-bitwidths,round-weights,quantize,fold-requantize,canonicalize",
}


# -O3 fits each of its recipes on part of the calibration data and keeps the one closest
# to float on the rest (qcc/driver.py: _choose_recipe): which is closer depends on the model
# and the data. Built on 16 images, PP-OCR det's mse recipe kept 88.0% int8 MACs and
# measured 13.7 dB on 32 other images, -O2's 97.4% and 14.7 dB (-O3 had been 1.25x slower
# than -O2 on det, and less accurate); on PP-OCR cls 640 held-out crops measured 27.1 dB
# for each, and held-out halves and quarters of 16 images disagreed on cls and det.
# -O2's recipe comes first, the one kept unless the mse recipe beats it beyond chance on the
# held-out batches (driver.replaces): on PP-OCRv5 rec (24 crops) the mse recipe measured
# 12.5 dB held out against 26.1, and on 48 other crops 45.8% exact strings against 75.0%
RECIPES = {"O3": (PIPELINES["O2"], PIPELINES["O3"])}


def pipeline_for(level: str) -> str:
    key = level.upper().lstrip("-")
    if key not in PIPELINES:
        raise ValueError(f"unknown optimization level '{level}' (known: -O0, -O1, -O2, -O3)")
    return PIPELINES[key]


def recipes_for(level: str) -> tuple:
    """The pipelines a level tries: its own, or -O3's recipes (the first is the level's)."""
    return RECIPES.get(level.upper().lstrip("-"), (pipeline_for(level),))
