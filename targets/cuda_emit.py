"""`qcc compile --emit cuda,ptx`: the device code of a CUDA build, as files to read and check.

TVM keeps a CUDA build's kernels as CUDA C++ source (compiled when the library is
loaded on a GPU machine), so no GPU, nvcc or NVRTC is needed to get them:

- `cuda` -> OUT/kernels.cu: the source of every module of kind "cuda" under the
  executable (ex.mod and its imports, recursively), concatenated in import order.
- `ptx`  -> OUT/kernels.ptx: `nvcc --ptx -gencode arch=compute_XX,code=sm_XX kernels.cu`
  when nvcc is on PATH (otherwise a warning and no file).

Whether TVM itself chose dp4a is visible in kernels.cu (`__dp4a`); nvcc also turns
plain int8 multiply-add loops into `dp4a` in the PTX.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence

KINDS = ("cuda", "ptx")


class EmitError(Exception):
    """A request for device code that cannot be met; one line."""


def parse_kinds(text_or_list) -> List[str]:
    """'cuda,ptx' (or a list) -> ['cuda', 'ptx'], checked, in KINDS order."""
    items = text_or_list.split(",") if isinstance(text_or_list, str) else list(text_or_list)
    kinds = {k.strip().lower() for k in items if k and k.strip()}
    unknown = sorted(kinds - set(KINDS))
    if unknown:
        raise EmitError(f"--emit: unknown kind '{unknown[0]}' (known: {', '.join(KINDS)})")
    return [k for k in KINDS if k in kinds]


def cuda_modules(mod) -> Iterator:
    """Every runtime module of kind 'cuda' under `mod` (depth first, import order)."""
    from .parallel_build import runtime_modules

    return (m for m in runtime_modules(mod) if m.kind == "cuda")


def cuda_source(ex) -> str:
    """The CUDA C++ source of an executable (tvm.compile's result) or runtime module."""
    mod = getattr(ex, "mod", ex)
    sources = [m.inspect_source() for m in cuda_modules(mod)]
    if not sources:
        raise EmitError("the build has no CUDA module (nothing ran on the device?)")
    return "\n".join(s if s.endswith("\n") else s + "\n" for s in sources)


def sm_of(target: dict) -> int:
    """70 from a cuda target dict's arch 'sm_70' (or 'sm_90a')."""
    m = re.fullmatch(r"sm_(\d+)[a-z]?", str(target.get("arch", "")))
    if not m:
        raise EmitError(f"cannot tell the GPU architecture from the target's arch {target.get('arch')!r}")
    return int(m.group(1))


def nvcc_ptx(source: str, sm: int, nvcc: str = "nvcc") -> str:
    """The PTX nvcc makes of `source` for one arch. It runs in a scratch folder on a file named
    kernels.cu (nvcc's temporaries stay there; no varying path can reach the output)."""
    with tempfile.TemporaryDirectory(prefix="qcc-nvcc-") as td:
        (Path(td) / "kernels.cu").write_text(source)
        cmd = [nvcc, "--ptx", "-gencode", f"arch=compute_{sm},code=sm_{sm}", "-w", "kernels.cu",
               "-o", "kernels.ptx"]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=td)
        if p.returncode != 0:
            lines = [ln for ln in p.stderr.splitlines() if "error" in ln] or p.stderr.splitlines() or ["?"]
            first = re.sub(r"^kernels\.cu\((\d+)\): error: ", r"line \1: ", lines[0].strip())
            raise EmitError(f"nvcc --ptx for sm_{sm} rejected kernels.cu: {first}")
        return (Path(td) / "kernels.ptx").read_text()


def emit(graph, preset, out_dir, kinds: Sequence[str], *, ex=None,
         warn: Optional[Callable[[str], None]] = None, log: Optional[Callable[[str], None]] = None) -> List[str]:
    """Write the requested device code for `graph` built for `preset` into out_dir; returns the file
    names written. `ex` is the executable when the caller has it (else the graph is compiled again:
    TVM builds are deterministic, so it is the same code as the artifact's model.so)."""
    kinds = parse_kinds(kinds)
    if not kinds:
        return []
    if preset.family != "cuda":
        raise EmitError(f"--emit {','.join(kinds)} needs a cuda target, not {preset.name}")
    out_dir = Path(out_dir)
    if ex is None:
        from .builder import compile_graph

        if log:
            log("generating CUDA source")
        ex = compile_graph(graph, preset)
    src = cuda_source(ex)
    written = []
    cu = out_dir / "kernels.cu"
    if "cuda" in kinds:
        cu.write_text(src)
        written.append(cu.name)
    if "ptx" in kinds:
        nvcc = shutil.which("nvcc")
        if nvcc is None:
            (warn or (lambda m: None))("nvcc is not on PATH: kernels.ptx was not written (--emit ptx)")
        else:
            sm = sm_of(preset.target_dict())
            if log:
                log(f"nvcc --ptx for sm_{sm}")
            (out_dir / "kernels.ptx").write_text(nvcc_ptx(src, sm, nvcc))
            written.append("kernels.ptx")
    return written


def features(source: str, names: Iterable[str] = ("__dp4a", "mma", "wmma", "__global__")) -> dict:
    """How often each name occurs in a source or PTX text (for reports and tests)."""
    return {n: source.count(n) for n in names}
