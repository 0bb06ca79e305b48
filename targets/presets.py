"""Target presets: the machines qcc compiles for, as data.

A preset names a TVM target (always a JSON-style dict: TVM 0.27 accepts only
those), the family that picks the lowering strategy, the C++ toolchain that
links the exported library, and the capabilities later passes ask about
(`"vnni" in preset.capabilities`) instead of parsing target strings.

Presets are frozen; `preset.target_dict()` hands out a fresh copy of the dict
and `preset.tvm_target()` the `tvm.target.Target` built from it.
"""
from __future__ import annotations

import copy
import functools
import os
import platform
from dataclasses import dataclass, field, replace
from typing import Any, Dict, FrozenSet, List, Optional

FAMILIES = ("x86", "arm", "cuda")
CAPABILITIES = frozenset({
    # x86
    "avx2", "fma", "avx512", "vnni",
    # arm
    "neon", "dotprod", "i8mm", "fp16",
    # cuda
    "dp4a", "imma", "bf16", "fp8",
})

X86_TRIPLE = "x86_64-linux-gnu"
ARM_TRIPLE = "aarch64-linux-gnu"
ARM_CXX = "aarch64-linux-gnu-g++"


@dataclass(frozen=True)
class TargetPreset:
    name: str
    tvm_target: Dict[str, Any] = field(hash=False)
    family: str
    toolchain: Optional[str]  # C++ driver that links model.so; None = TVM's default host compiler
    capabilities: FrozenSet[str]
    description: str

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"preset {self.name}: family must be one of {FAMILIES}, got {self.family!r}")
        object.__setattr__(self, "capabilities", frozenset(self.capabilities))
        unknown = self.capabilities - CAPABILITIES
        if unknown:
            raise ValueError(f"preset {self.name}: unknown capabilities {sorted(unknown)}")
        kind = self.tvm_target.get("kind")
        if self.family == "cuda" and kind != "cuda":
            raise ValueError(f"preset {self.name}: a cuda preset needs kind 'cuda', got {kind!r}")
        if self.family != "cuda" and kind != "llvm":
            raise ValueError(f"preset {self.name}: a CPU preset needs kind 'llvm', got {kind!r}")

    # --- views -----------------------------------------------------------------------
    def target_dict(self) -> Dict[str, Any]:
        """A fresh deep copy of the TVM target dict (safe to edit)."""
        return copy.deepcopy(dict(self.tvm_target))

    def target(self):
        """The `tvm.target.Target` for this preset."""
        import tvm

        return tvm.target.Target(self.target_dict())

    @property
    def is_cpu(self) -> bool:
        return self.family in ("x86", "arm")

    @property
    def host_runnable(self) -> bool:
        """Whether code built for this preset can run in this process."""
        if self.family == "cuda":
            return False
        machine = platform.machine().lower()
        if self.family == "x86":
            if machine not in ("x86_64", "amd64"):
                return False
            return _host_supports(self.capabilities)
        return machine in ("aarch64", "arm64") and _host_supports(self.capabilities)

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    def with_cores(self, n: int) -> "TargetPreset":
        """The same preset with `num-cores` set in the llvm (or cuda host) target."""
        d = self.target_dict()
        llvm = d["host"] if d.get("kind") == "cuda" else d
        llvm["num-cores"] = int(n)
        return replace(self, tvm_target=d)

    def with_target(self, **changes) -> "TargetPreset":
        d = self.target_dict()
        d.update(changes)
        return replace(self, tvm_target=d)


# LLVM's machine combiner splits each vpdpwssd (the w8a16 kernels' int16 dot product)
# into vpmaddwd + vpaddd unless the CPU model says the fused one is fast (only Zen 4's
# does): two instructions for the same 32 products, where the kernels' 24 independent
# accumulators need throughput, not a shorter chain. Measured on this Xeon (2 threads):
# PP-OCR det's 3x3 96->24 w8a16 conv at 96x144 1.45 -> 1.04 ms, outputs identical.
_VNNI_MATTR = ["+fast-dpwssd"]
# LLVM's Intel AVX-512 CPU models prefer 256-bit vectors for the loops it vectorizes itself
# (AVX-512's clock penalty on Skylake-SP). Our kernels issue 512-bit instructions anyway,
# so the penalty is paid; what the preference did was run the epilogues left to the
# loop vectorizer (dequantize, relu, quantize, elementwise ops) eight lanes at a time.
# Measured on this Xeon (host preset, whole-model p50 of 5 interleaved rounds): PP-OCR cls
# int8 0.38-0.41 -> 0.37-0.39 ms on 1 thread, 0.40-0.42 -> 0.39-0.41 on 2; its float build
# 0.59-0.62 -> 0.57-0.59 on 1; det int8 9.6-9.8 -> 9.3-9.5 ms on 2. The cascadelake model
# (x86-avx512) gains more: the 1x1 8->8 conv at 24x96 7.9 -> 4.2 us.
_AVX512_MATTR = ["-prefer-256-bit"]


def _x86_mattr(caps) -> List[str]:
    return (list(_VNNI_MATTR) if "vnni" in caps else []) + (list(_AVX512_MATTR) if "avx512" in caps else [])


def _x86(name: str, mcpu: str, caps, description: str) -> TargetPreset:
    d: Dict[str, Any] = {"kind": "llvm", "mtriple": X86_TRIPLE, "mcpu": mcpu}
    mattr = _x86_mattr(caps)
    if mattr:
        d["mattr"] = mattr
    return TargetPreset(name, d, "x86", None, frozenset(caps), description)


def _arm(name: str, mcpu: str, mattr: List[str], caps, description: str) -> TargetPreset:
    return TargetPreset(name, {"kind": "llvm", "mtriple": ARM_TRIPLE, "mcpu": mcpu, "mattr": list(mattr)},
                        "arm", ARM_CXX, frozenset(caps), description)


def _cuda(sm: int, caps, description: str) -> TargetPreset:
    # 48 KiB: the static shared memory every arch grants without an opt-in
    return TargetPreset(f"cuda-sm{sm}", {"kind": "cuda", "arch": f"sm_{sm}",
                                         "max_shared_memory_per_block": 49152,
                                         "host": {"kind": "llvm", "mtriple": X86_TRIPLE}},
                        "cuda", None, frozenset(caps), description)


_STATIC: Dict[str, TargetPreset] = {p.name: p for p in [
    _x86("x86-avx2", "haswell", {"avx2", "fma"}, "x86-64 with AVX2/FMA (Haswell and later)"),
    _x86("x86-avx512", "cascadelake", {"avx2", "fma", "avx512", "vnni"},
         "x86-64 with AVX-512 and VNNI (Cascade Lake and later, Zen 4)"),
    _arm("arm-a53", "cortex-a53", ["+neon"], {"neon"}, "ARM Cortex-A53 (AArch64, NEON)"),
    _arm("arm-a72", "cortex-a72", ["+neon"], {"neon"}, "ARM Cortex-A72 (AArch64, NEON)"),
    _arm("arm-a76", "cortex-a76", ["+neon", "+dotprod"], {"neon", "dotprod", "fp16"},
         "ARM Cortex-A76 (AArch64, NEON + dot product)"),
    _arm("arm-neoverse-n1", "neoverse-n1", ["+neon", "+dotprod"], {"neon", "dotprod", "fp16"},
         "ARM Neoverse N1 (AArch64, NEON + dot product)"),
    _cuda(75, {"dp4a", "imma"}, "NVIDIA Turing (sm_75): dp4a, int8 tensor cores"),
    _cuda(80, {"dp4a", "imma", "bf16"}, "NVIDIA Ampere A100 (sm_80): dp4a, int8 tensor cores, bf16"),
    _cuda(86, {"dp4a", "imma", "bf16"}, "NVIDIA Ampere consumer (sm_86): dp4a, int8 tensor cores, bf16"),
    _cuda(90, {"dp4a", "imma", "bf16", "fp8"}, "NVIDIA Hopper (sm_90): dp4a, int8 tensor cores, bf16, fp8"),
]}


# --- the host --------------------------------------------------------------------------

def _cpu_flags() -> FrozenSet[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _host_capabilities() -> FrozenSet[str]:
    flags = _cpu_flags()
    caps = set()
    for cap, needs in {"avx2": ("avx2",), "fma": ("fma",), "avx512": ("avx512f", "avx512bw"),
                       "vnni": ("avx512_vnni",), "neon": ("asimd",), "dotprod": ("asimddp",),
                       "i8mm": ("i8mm",), "fp16": ("asimdhp",)}.items():
        if all(n in flags for n in needs):
            caps.add(cap)
    return frozenset(caps)


def _host_supports(caps) -> bool:
    flags = _cpu_flags()
    if not flags:
        return True  # cannot tell; assume yes
    return set(caps) <= _host_capabilities()


@functools.lru_cache(maxsize=None)
def host_preset() -> TargetPreset:
    """A preset for the machine this process runs on (mcpu from LLVM, all cores)."""
    import tvm

    cpu = str(tvm.target.codegen.llvm_get_system_cpu())
    machine = platform.machine().lower()
    family = "arm" if machine in ("aarch64", "arm64") else "x86"
    d: Dict[str, Any] = {"kind": "llvm", "mcpu": cpu, "num-cores": os.cpu_count() or 1}
    caps = _host_capabilities()
    if family == "arm":
        d["mtriple"] = ARM_TRIPLE
        d["mattr"] = ["+neon"] + (["+dotprod"] if "dotprod" in caps else [])
    else:
        d["mtriple"] = X86_TRIPLE
        mattr = _x86_mattr(caps)
        if mattr:
            d["mattr"] = mattr
    return TargetPreset("host", d, family, None, caps,
                        f"this machine ({cpu}, {d['num-cores']} cores)")


# --- lookup ----------------------------------------------------------------------------

def target_names() -> List[str]:
    """Names of every preset, `host` included."""
    return list(_STATIC) + ["host"]


def list_targets() -> List[TargetPreset]:
    """Every preset, `host` (this machine) last."""
    return list(_STATIC.values()) + [host_preset()]


def get_target(name) -> TargetPreset:
    """The preset called `name` (a TargetPreset passes through unchanged)."""
    if isinstance(name, TargetPreset):
        return name
    if name == "host":
        return host_preset()
    try:
        return _STATIC[name]
    except KeyError:
        raise ValueError(f"unknown target '{name}' (known: {', '.join(target_names())})") from None


def register_target(preset: TargetPreset, *, replace_existing: bool = False) -> None:
    """Add a preset (for tests and out-of-tree targets)."""
    if preset.name == "host" or (preset.name in _STATIC and not replace_existing):
        raise ValueError(f"target '{preset.name}' already exists")
    _STATIC[preset.name] = preset
