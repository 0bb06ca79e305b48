"""qcc.toml: the compile options a project keeps beside its model (`qcc compile --config FILE`).

    [precision]                 # per layer: name or glob = precision (later entries win)
    "conv_12" = "int16"         # int16 activations (w8a16)
    "*.head.*" = "float"
    "fc*" = "w4"                # 4-bit weights, packed two per byte in the artifact

    [precision.ops]             # per op type (conv, gemm, matmul); layer rules above win
    matmul = "int8"

    [budget]
    max-error = "30dB"          # or a relative error like 0.01
    min-int8-fraction = 0.9
    size-budget = "2MB"         # bytes of weights as the artifact stores them

    [calib]
    data = "calib.npz"          # relative to this file
    method = "mse"              # minmax | percentile | entropy | mse

Command-line flags win over the file: `--precision` rules come after the file's (so they
win where both match), and `--max-error` etc. replace its values. The file is read only
when named with `--config` (never picked up from the working directory: a compile must
say what it depends on), and it is listed in the depfile and hashed into the manifest.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

SECTIONS = {
    "precision": None,  # free-form: globs, plus the `ops` table
    "budget": ("max-error", "min-int8-fraction", "size-budget"),
    "calib": ("data", "method"),
}
CALIB_METHODS = ("minmax", "percentile", "entropy", "mse")


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Config:
    path: str
    precision: Tuple[Tuple[str, str], ...] = ()  # (pattern, choice) in order; op types as "op:TYPE"
    max_error: Optional[str] = None
    min_int8_fraction: Optional[float] = None
    size_budget: Optional[str] = None
    calib: Optional[str] = None
    calib_method: Optional[str] = None

    def precision_text(self) -> str:
        """The rules as `--precision` text ('op:matmul=int8;conv_12=w8a16')."""
        return ";".join(f"{p}={c}" for p, c in self.precision)


def load_config(path) -> Config:
    """Read and check a qcc.toml; every choice is validated here, with the file in the message."""
    from .passes.assign_bitwidths import normalize_choice, parse_error_budget, parse_size

    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None

    def bad(msg: str) -> ConfigError:
        return ConfigError(f"{path}: {msg}")

    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise bad(f"unknown section [{unknown[0]}] (known: {', '.join('[' + s + ']' for s in SECTIONS)})")
    for sec, keys in SECTIONS.items():
        if sec in data and not isinstance(data[sec], dict):
            raise bad(f"[{sec}] must be a table")
        if keys is not None:
            extra = sorted(set(data.get(sec, {})) - set(keys))
            if extra:
                raise bad(f"[{sec}] has no key '{extra[0]}' (known: {', '.join(keys)})")

    def choice(key: str, value) -> str:
        if not isinstance(value, str):
            raise bad(f"[precision] {key}: give the precision as a string, like \"int8\"")
        try:
            return normalize_choice(value)
        except ValueError as e:
            raise bad(f"[precision] {key}: {e}") from None

    rules: List[Tuple[str, str]] = []
    prec = data.get("precision", {})
    ops = prec.get("ops", {})
    if not isinstance(ops, dict):
        raise bad("[precision.ops] must be a table of op type = precision")
    rules += [(f"op:{op}", choice(f"ops.{op}", c)) for op, c in ops.items()]  # op types first: layers win
    rules += [(pat, choice(pat, c)) for pat, c in prec.items() if pat != "ops"]

    budget = data.get("budget", {})
    max_error = budget.get("max-error")
    if max_error is not None:
        try:
            parse_error_budget(str(max_error))
        except ValueError as e:
            raise bad(f"[budget] max-error: {e}") from None
        max_error = str(max_error)
    frac = budget.get("min-int8-fraction")
    if frac is not None and (isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac <= 1):
        raise bad("[budget] min-int8-fraction must be a number in [0, 1]")
    size = budget.get("size-budget")
    if size is not None:
        try:
            parse_size(size)
        except ValueError as e:
            raise bad(f"[budget] size-budget: {e}") from None
        size = str(size)

    calib = data.get("calib", {})
    method = calib.get("method")
    if method is not None and method not in CALIB_METHODS:
        raise bad(f"[calib] method '{method}' is not one of {', '.join(CALIB_METHODS)}")
    cdata = calib.get("data")
    if cdata is not None:
        if not isinstance(cdata, str):
            raise bad("[calib] data must be a path")
        cdata = str(p.parent / cdata) if not Path(cdata).is_absolute() else cdata
    return Config(path=str(path), precision=tuple(rules), max_error=max_error,
                  min_int8_fraction=None if frac is None else float(frac), size_budget=size,
                  calib=cdata, calib_method=method)
