"""Where passes come from: the registry, `register_pass`, plugins and entry points.

A pass is registered under a stable kebab-case name, with its origin (built-in
module, plugin file or package entry point) so a clash can name both sides and
`qcc passes` can say where each pass lives. A pass is either a `Pass` subclass
whose dataclass fields are its options, or a plain function `(graph, ctx) ->
bool` whose keyword-only parameters are its options.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, FrozenSet, Optional, Union

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class PassError(Exception):
    """A one-line error about passes and pipelines (unknown pass, bad option, ...)."""


class Pass:
    """Base class of class-style passes. Subclasses are frozen dataclasses.

    name:      kebab-case name used on the command line
    requires:  IR properties that must hold before the pass runs ("calibrated", ...)
    produces:  IR properties that hold after it
    invalidates: properties it breaks (e.g. a rewrite after ranges were derived)
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    requires: ClassVar[FrozenSet[str]] = frozenset()
    produces: ClassVar[FrozenSet[str]] = frozenset()
    invalidates: ClassVar[FrozenSet[str]] = frozenset()

    def run(self, graph, ctx) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def options(self) -> Dict[str, Any]:
        if dataclasses.is_dataclass(self):
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {}

    def spec(self) -> str:
        """The pipeline text that recreates this pass with its non-default options."""
        opts = []
        if dataclasses.is_dataclass(self):
            for f in dataclasses.fields(self):
                v = getattr(self, f.name)
                if f.default is not dataclasses.MISSING and v == f.default:
                    continue
                opts.append(f"{f.name.replace('_', '-')}={format_option(v)}")
        return self.name + ("{" + " ".join(opts) + "}" if opts else "")


def format_option(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ",".join(map(format_option, v))
    text = str(v)
    if text == "" or any(c in text for c in " ,{}'\"\t\n"):
        # quoted, so that the pipeline text parses back to the same option
        return '"' + text + '"' if "'" in text else "'" + text + "'"
    return text


@dataclass(frozen=True)
class PassInfo:
    name: str
    cls: type
    origin: str

    @property
    def summary(self) -> str:
        return self.cls.summary


_REGISTRY: Dict[str, PassInfo] = {}
_origin_stack = []
_loaded_builtins = False
_loaded_entry_points = False


@contextmanager
def _origin(label: str):
    _origin_stack.append(label)
    try:
        yield
    finally:
        _origin_stack.pop()


def _function_pass(name: str, fn: Callable) -> type:
    """Wrap `fn(graph, ctx, *, opt=default...)` as a frozen-dataclass Pass."""
    params = inspect.signature(fn).parameters.values()
    fields = []
    for p in params:
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            if p.default is inspect.Parameter.empty:
                raise PassError(f"pass '{name}': option '{p.name}' needs a default")
            ann = p.annotation if p.annotation is not inspect.Parameter.empty else type(p.default)
            fields.append((p.name, ann, dataclasses.field(default=p.default)))

    def run(self, graph, ctx):
        return bool(fn(graph, ctx, **self.options()))

    doc = (fn.__doc__ or "").strip()
    cls = dataclasses.make_dataclass(
        fn.__name__, fields, bases=(Pass,), frozen=True,
        namespace={"run": run, "name": name, "summary": doc.split("\n")[0], "__doc__": doc,
                   "requires": frozenset(getattr(fn, "requires", ())),
                   "produces": frozenset(getattr(fn, "produces", ())),
                   "invalidates": frozenset(getattr(fn, "invalidates", ()))})
    cls.__module__ = fn.__module__
    return cls


def register_pass(arg: Union[str, type, Callable, None] = None, *, summary: Optional[str] = None):
    """Register a pass: `@register_pass` on a Pass class with a `name`, or
    `@register_pass("my-pass")` on a class or a function `(graph, ctx) -> bool`."""

    def deco(obj, name: Optional[str] = None):
        # so a clash with a built-in is caught whichever registers first; a built-in itself
        # does not load the others (one imported first, `import qcc.passes.equalize`, would be
        # half-initialized while the others import from it), and meets them as they register
        if not getattr(obj, "__module__", "").startswith("qcc.passes."):
            load_builtins()
        if inspect.isclass(obj):
            if not issubclass(obj, Pass):
                raise PassError(f"{obj.__name__} is not a qcc Pass subclass")
            if name:
                obj.name = name
            if not dataclasses.is_dataclass(obj):
                obj = dataclass(frozen=True)(obj)
            cls = obj
        else:
            cls = _function_pass(name or obj.__name__.replace("_", "-"), obj)
        if summary:
            cls.summary = summary
        if not cls.summary:
            cls.summary = ((cls.__doc__ or "").strip().split("\n") or [""])[0]
        if not _NAME.match(cls.name or ""):
            raise PassError(f"pass name '{cls.name}' is not kebab-case (like 'fold-requantize')")
        origin = _origin_stack[-1] if _origin_stack else f"module {obj.__module__}"
        old = _REGISTRY.get(cls.name)
        if old is not None:
            raise PassError(f"pass '{cls.name}' is registered twice: by {old.origin} and by {origin}")
        _REGISTRY[cls.name] = PassInfo(cls.name, cls, origin)
        return obj

    if isinstance(arg, str):
        return lambda obj: deco(obj, arg)
    if arg is None:
        return deco
    return deco(arg)


def unregister_pass(name: str) -> None:
    """Forget a pass (tests and notebooks that re-run a plugin)."""
    _REGISTRY.pop(name, None)


def load_builtins() -> None:
    global _loaded_builtins
    if _loaded_builtins:
        return
    _loaded_builtins = True
    import pkgutil

    import qcc.passes as pkg

    for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if m.name.startswith("_"):
            continue
        with _origin(f"built-in (qcc.passes.{m.name})"):
            importlib.import_module(f"qcc.passes.{m.name}")


def load_entry_points() -> None:
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="qcc.passes"):
        label = f"entry point '{ep.name}' ({ep.value})"
        with _origin(label):
            try:
                obj = ep.load()
            except Exception as e:
                raise PassError(f"cannot load {label}: {e}") from None
            if (inspect.isclass(obj) and issubclass(obj, Pass) and obj.name
                    and obj.name not in _REGISTRY):
                register_pass(obj)


def load_plugin(path) -> None:
    """Import a Python file; the `@register_pass` decorators in it register its passes."""
    path = Path(path)
    if not path.is_file():
        raise PassError(f"plugin {path}: no such file")
    modname = "qcc_plugin_" + re.sub(r"\W", "_", str(path.resolve()))
    if modname in sys.modules:
        return  # loading the same file twice is not a clash
    spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    with _origin(f"plugin {path}"):
        try:
            spec.loader.exec_module(module)
        except PassError:
            del sys.modules[modname]
            raise
        except Exception as e:
            del sys.modules[modname]
            raise PassError(f"plugin {path}: {type(e).__name__}: {e}") from None


def registered_passes() -> Dict[str, PassInfo]:
    load_builtins()
    load_entry_points()
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> PassInfo:
    passes = registered_passes()
    if name not in passes:
        import difflib

        near = difflib.get_close_matches(name, passes, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise PassError(f"unknown pass '{name}'{hint}; `qcc passes` lists them")
    return passes[name]
