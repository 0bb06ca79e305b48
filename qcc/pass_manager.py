"""Run pipelines of passes, with instruments kept apart from the passes themselves.

A pipeline is text (`canonicalize,fuse{max-iters=4}`) so any run can be printed
and replayed. Before each pass the manager checks the IR properties it requires;
after it, it verifies the graph (when asked) and lets instruments print, dump or
time. A failure inside a pass comes back as "in pass X (after a, b, c): ...".
"""
from __future__ import annotations

import dataclasses
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO

from .ir.graph import Graph
from .ir.verify import VerifyError, verify
from .passes_registry import Pass, PassError, get_pass

# --- IR properties ---------------------------------------------------------------------
# name -> (what it means, checker). A checker looks at the IR itself, so a graph read
# from a .qir file that was calibrated elsewhere satisfies "calibrated" too.
PROPERTIES: Dict[str, tuple] = {}


def register_property(name: str, description: str, checker: Callable[[Graph], bool]) -> None:
    PROPERTIES[name] = (description, checker)


register_property("shapes", "every value has a static type", lambda g: True)


class PassFailure(Exception):
    """A pass raised or broke the IR; the message says which and after what."""


@dataclass
class PassContext:
    """What passes share during one run: options of the whole compile, the report,
    warnings, and which IR properties are known to hold."""

    options: Dict[str, Any] = field(default_factory=dict)
    report: Dict[str, Any] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    properties: set = field(default_factory=set)
    history: List[str] = field(default_factory=list)
    log: Optional[Callable[[str], None]] = None

    def warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)

    def progress(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)


# --- pipeline text ---------------------------------------------------------------------

QUOTES = "'\""


def _split_top(text: str, sep: str = ",") -> List[str]:
    """`text` split at `sep` outside braces and quotes (a quoted option value may hold any of
    `,;{} `: `round-weights{exclude='head*;fc*'}`)."""
    parts, depth, cur, quote = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in QUOTES:
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise PassError(f"unbalanced '}}' in pipeline '{text}'")
        if ch == sep and depth == 0 and not quote:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if quote:
        raise PassError(f"unclosed {quote} in pipeline '{text}'")
    if depth:
        raise PassError(f"unbalanced '{{' in pipeline '{text}'")
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _option_items(opts: str) -> List[str]:
    """`key=v key2='a b;c', key3="x,y"` -> ['key=v', 'key2=a b;c', 'key3=x,y']: items are
    separated by spaces or commas outside quotes, and a value's quotes are dropped."""
    items, cur, quote, quoted = [], "", "", False
    for ch in opts + " ":
        if quote:
            if ch == quote:
                quote = ""
            else:
                cur += ch
        elif ch in QUOTES:
            quote, quoted = ch, True
        elif ch in " ,\t\n":
            if cur or quoted:
                items.append(cur)
            cur, quoted = "", False
        else:
            cur += ch
    return items


def _convert(value: str, typ, where: str):
    origin = typing.get_origin(typ)
    if typ is bool or typ == "bool":
        if value.lower() in ("true", "1", "yes", "on"):
            return True
        if value.lower() in ("false", "0", "no", "off"):
            return False
        raise PassError(f"{where}: expected true or false, got '{value}'")
    if typ in (int, "int"):
        try:
            return int(value)
        except ValueError:
            raise PassError(f"{where}: expected an integer, got '{value}'") from None
    if typ in (float, "float"):
        try:
            return float(value)
        except ValueError:
            raise PassError(f"{where}: expected a number, got '{value}'") from None
    if origin in (tuple, list):
        (inner, *_) = typing.get_args(typ) or (str,)
        return tuple(_convert(v, inner, where) for v in value.split(",") if v)
    return value


def parse_pass(spec: str) -> Pass:
    """`name{key=value key2=value}` -> a configured Pass instance."""
    spec = spec.strip()
    name, opts = spec, ""
    if "{" in spec:
        if not spec.endswith("}"):
            raise PassError(f"bad pass spec '{spec}': options go in braces at the end")
        name, opts = spec[:-1].split("{", 1)
    info = get_pass(name.strip())
    cls = info.cls
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    hints = typing.get_type_hints(cls) if fields else {}
    kwargs = {}
    for item in _option_items(opts):
        if "=" not in item:
            raise PassError(f"pass '{info.name}': option '{item}' needs a value (key=value)")
        k, v = item.split("=", 1)
        key = k.strip().replace("-", "_")
        if key not in fields:
            known = ", ".join(f.replace("_", "-") for f in fields) or "none"
            raise PassError(f"pass '{info.name}' has no option '{k}' (options: {known})")
        kwargs[key] = _convert(v.strip(), hints.get(key, str), f"pass '{info.name}' option '{k}'")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise PassError(f"pass '{info.name}': {e}") from None


def parse_pipeline(text: str) -> List[Pass]:
    return [parse_pass(p) for p in _split_top(text or "")]


def pipeline_text(passes: Sequence[Pass]) -> str:
    return ",".join(p.spec() for p in passes)


# --- instruments -----------------------------------------------------------------------

class Instrument:
    """Observes a run without being part of it (print, dump, time)."""

    def before_pass(self, p: Pass, graph: Graph, ctx: PassContext, index: int) -> None:
        pass

    def after_pass(self, p: Pass, graph: Graph, ctx: PassContext, index: int,
                   changed: bool, seconds: float) -> None:
        pass

    def finish(self, ctx: PassContext) -> None:
        pass


@dataclass
class PrintIRAfter(Instrument):
    """--print-ir-after-all (names=None) or --print-ir-after=PASS[,PASS]."""

    names: Optional[Sequence[str]] = None
    stream: TextIO = sys.stderr

    def after_pass(self, p, graph, ctx, index, changed, seconds):
        if self.names is None or p.name in self.names:
            self.stream.write(f"// ----- IR after {p.spec()}{'' if changed else ' (unchanged)'} -----\n")
            self.stream.write(str(graph))


@dataclass
class DumpDir(Instrument):
    """--dump-dir DIR: the IR after every pass as DIR/NNN-name.qir (+ .npz)."""

    directory: Path = Path("qcc-dump")

    def __post_init__(self):
        self.directory = Path(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def after_pass(self, p, graph, ctx, index, changed, seconds):
        from .ir.printer import save

        save(graph, self.directory / f"{index + 1:03d}-{p.name}.qir")


@dataclass
class TimePasses(Instrument):
    """--time-passes: wall time per pass, printed at the end."""

    stream: TextIO = sys.stderr
    times: List[tuple] = field(default_factory=list)

    def after_pass(self, p, graph, ctx, index, changed, seconds):
        self.times.append((p.spec(), seconds))

    def finish(self, ctx):
        total = sum(t for _, t in self.times) or 1e-12
        self.stream.write("pass timing:\n")
        for name, t in self.times:
            self.stream.write(f"  {t * 1000:9.2f} ms  {100 * t / total:5.1f}%  {name}\n")
        self.stream.write(f"  {total * 1000:9.2f} ms  100.0%  total\n")
        ctx.report.setdefault("pass_times_s", {}).update({n: round(t, 6) for n, t in self.times})


class PassManager:
    """Runs a pipeline over a graph: `PassManager("canonicalize,fuse").run(graph)`."""

    def __init__(self, pipeline="", *, verify_each: bool = False,
                 instruments: Sequence[Instrument] = (), stop_after: Optional[str] = None):
        self.passes: List[Pass] = parse_pipeline(pipeline) if isinstance(pipeline, str) else list(pipeline)
        self.verify_each = verify_each
        self.instruments = list(instruments)
        self.stop_after = stop_after
        if stop_after is not None and stop_after not in [p.name for p in self.passes]:
            raise PassError(f"--stop-after {stop_after}: no such pass in the pipeline")

    @property
    def pipeline(self) -> str:
        return pipeline_text(self.passes)

    def _check_requires(self, p: Pass, graph: Graph, ctx: PassContext) -> None:
        for prop in sorted(p.requires):
            if prop in ctx.properties:
                continue
            desc, checker = PROPERTIES.get(prop, (None, None))
            if checker is not None and checker(graph):
                ctx.properties.add(prop)
                continue
            by = sorted(i.name for i in _producers(prop))
            hint = f" (run {' or '.join(by)} first)" if by else ""
            raise PassFailure(f"pass {p.name} needs the IR to be '{prop}'"
                              f"{': ' + desc if desc else ''}{hint}")

    def run(self, graph: Graph, ctx: Optional[PassContext] = None) -> bool:
        ctx = ctx or PassContext()
        any_changed = False
        output_names = [v.name for v in graph.outputs]
        for i, p in enumerate(self.passes):
            self._check_requires(p, graph, ctx)
            for ins in self.instruments:
                ins.before_pass(p, graph, ctx, i)
            after = f" (after {', '.join(ctx.history)})" if ctx.history else ""
            t0 = time.perf_counter()
            try:
                changed = bool(p.run(graph, ctx))
            except (PassFailure, KeyboardInterrupt):
                raise
            except Exception as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise PassFailure(f"in pass {p.name}{after}: {msg}") from e
            seconds = time.perf_counter() - t0
            ctx.history.append(p.name)
            ctx.properties -= set(p.invalidates)
            ctx.properties |= set(p.produces)
            any_changed |= changed
            if self.verify_each:
                try:
                    verify(graph)
                except VerifyError as e:
                    raise PassFailure(f"in pass {p.name}{after}: the IR is invalid afterwards: {e.msg}") from None
            for ins in self.instruments:
                ins.after_pass(p, graph, ctx, i, changed, seconds)
            if self.stop_after == p.name:
                break
        _restore_output_names(graph, output_names)
        for ins in self.instruments:
            ins.finish(ctx)
        return any_changed


def _restore_output_names(graph: Graph, names) -> None:
    """Output names are the model's interface: rewrites may put another value in an
    output's place (`y` -> `y.dq`); give it the old name back once that name is free."""
    if len(names) != len(graph.outputs):
        return
    for v, name in zip(graph.outputs, names):
        if v.name != name and not graph.has_value(name) and graph.outputs.count(v) == 1 \
                and v not in graph.inputs:
            graph.rename(v, name)


def _producers(prop: str):
    from .passes_registry import registered_passes

    return [i for i in registered_passes().values() if prop in i.cls.produces]
