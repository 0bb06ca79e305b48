"""The named pipelines behind -O0 … -O3, in one place, as plain pipeline text.

`qcc compile --print-pipeline` prints the text a run used, so any run can be
replayed with `--passes`. Each step sits where it does for a reason:
canonicalize first so every later pattern sees folded constants and no no-ops;
fuse before observing so observers sit on the tensors that will really exist;
ranges before bit widths, bit widths before quantize; folding requantize last,
once every quantize/dequantize pair is in place.
"""

PIPELINES = {
    # import and lower in float: only semantics-preserving clean-up
    "O0": "canonicalize",
    # float activations, int8 weights: no calibration data needed
    "O1": "canonicalize,fuse,quantize-weights,canonicalize",
    # the static int8 pipeline
    "O2": "canonicalize,fuse,insert-observers,propagate-ranges,assign-bitwidths,quantize,"
          "fold-requantize,canonicalize",
    # O2 with the better calibration method (mixed-precision search joins with issue 5)
    "O3": "canonicalize,fuse,insert-observers{method=mse},propagate-ranges,"
          "assign-bitwidths,quantize,fold-requantize,canonicalize",
}


def pipeline_for(level: str) -> str:
    key = level.upper().lstrip("-")
    if key not in PIPELINES:
        raise ValueError(f"unknown optimization level '{level}' (known: -O0, -O1, -O2, -O3)")
    return PIPELINES[key]
