"""tvm.compile and export_library for CPU targets, with the kernels compiled as several
LLVM modules side by side.

TVM compiles all of a model's kernels as one LLVM module: the TIR lowering and LLVM's
optimisation (tvm.tirx.build), then, at export, LLVM's object emission run on one thread
(PP-OCR det: 9 s and 7 s of a 20 s build on a 2-core machine). The kernels do not call one
another, so they split into `PARTS` modules compiled on threads (TVM's C++ releases the
GIL): the VM finds each kernel in whichever module holds it, and the library links one
object file per part. `PARTS` is fixed, not the core count, so the library's bytes do not
depend on the machine that built it.

Anything else (GPU targets, whose host and device code must stay together) goes through
tvm.compile and export_library unchanged.
"""
from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, List

import tvm
from tvm import relax

PARTS = 4


def _splittable(target) -> bool:
    return target.kind.name == "llvm"


def _threads() -> int:
    from qcc.batches import workers

    return min(PARTS, workers())


def compile_module(mod: tvm.IRModule, target, relax_pipeline: Any, tir_pipeline: Any):
    """tvm.compile(mod, target, relax_pipeline=..., tir_pipeline=...) as relax.build does it,
    with the TIR functions built as `PARTS` LLVM modules on threads."""
    if not _splittable(target):
        return tvm.compile(mod, target=target, relax_pipeline=relax_pipeline, tir_pipeline=tir_pipeline)
    from tvm.relax import vm_build
    from tvm.relax import _ffi_api as relax_api

    if isinstance(relax_pipeline, str):
        relax_pipeline = relax.get_pipeline(relax_pipeline)
    if relax_pipeline is not None:
        with target:
            mod = relax_pipeline(mod)
    attrs = dict(mod.attrs) if mod.attrs else {}
    ext_libs = list(attrs.get("external_mods", []))
    params = dict(attrs.get("const_name_to_constant", {}))
    builder = relax.ExecBuilder()
    mod = vm_build._vmcodegen(builder, mod, "bytecode")
    tir_mod = vm_build._filter_tir(mod)
    lib = None
    if tir_mod is not None and len(tir_mod.get_global_vars()) > 0:
        tir_mod = vm_build._auto_attach_system_lib_prefix(tir_mod, target, None)
        funcs = sorted(tir_mod.functions.items(), key=lambda kv: kv[0].name_hint)
        parts = [tvm.IRModule(dict(funcs[i::PARTS]), attrs=tir_mod.attrs) for i in range(PARTS)]
        parts = [p for p in parts if len(p.get_global_vars())]
        pass_context = tvm.transform.PassContext.current()  # thread-local: hand it on

        def build(part):
            with pass_context:
                return tvm.tirx.build(part, target=target, pipeline=tir_pipeline)

        with ThreadPoolExecutor(_threads()) as pool:
            libs = list(pool.map(build, parts))
        lib = libs[0]
        for other in libs[1:]:
            lib.import_module(other)
    return vm_build.VMExecutable(relax_api.VMLink(builder, target, lib, ext_libs, params))


def export_library(ex, path: str, fcompile=None) -> None:
    """ex.export_library(path, fcompile=fcompile), the object files written on threads: as
    TVM's loop does it (lib<i>.o per module, devc.o for the import tree, then fcompile) when
    every module to link is an LLVM one, else TVM's own export."""
    mod = getattr(ex, "mod", ex)  # a relax Executable wraps the runtime module
    mods: List = mod._collect_dso_modules()
    if not mods or any(m.kind != "llvm" for m in mods) or len(mods) == 1:
        ex.export_library(path, fcompile=fcompile)
        return
    from tvm.runtime import _ffi_api as runtime_api
    from tvm.support import cc

    with tempfile.TemporaryDirectory(prefix="qcc-export-") as ws:
        files = [os.path.join(ws, f"lib{i}.o") for i in range(len(mods))]
        with ThreadPoolExecutor(_threads()) as pool:
            list(pool.map(lambda mf: mf[0].write_to_file(mf[1]), zip(mods, files)))
        last = mods[-1]
        system_lib = last.get_function("__tvm_is_system_module")()
        llvm_target = last.get_function("_get_target_string")()
        prefix = last.get_function("__tvm_get_system_lib_prefix")() or ""
        if mod.imports:
            devc = os.path.join(ws, f"{prefix}devc.o")
            runtime_api.ModulePackImportsToLLVM(mod, system_lib, llvm_target, prefix).write_to_file(devc)
            files.append(devc)
        (fcompile or cc.create_shared)(path, files)


def runtime_modules(ex) -> Iterator[Any]:
    """Every runtime module under an executable (or a runtime module), depth first in import
    order, each once: a loaded library's code sits in its imports, which `_collect_dso_modules`
    does not list."""
    seen = set()
    todo = [getattr(ex, "mod", ex)]
    while todo:
        m = todo.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        yield m
        todo.extend(reversed(list(m.imports)))


def llvm_source(ex, fmt: str = "ll") -> str:
    """The LLVM IR ("ll") or assembly ("asm") of every LLVM module of an executable (all the
    parts, not only the first the executable imports)."""
    mod = getattr(ex, "mod", ex)
    return "\n".join(m.inspect_source(fmt) for m in mod._collect_dso_modules() if m.kind == "llvm")
