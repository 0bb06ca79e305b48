"""The pass manager: pipelines, options, requirements, instruments, plugins, errors."""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest

from qcc import Pass, PassContext, PassManager, parse, register_pass
from qcc.ir.printer import print_graph
from qcc.pass_manager import DumpDir, PassFailure, PrintIRAfter, TimePasses, parse_pipeline, pipeline_text
from qcc.passes_registry import PassError, load_plugin, registered_passes, unregister_pass
from qcc.pipelines import PIPELINES

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

NEGS = """graph @main(%x: f32[4]) {
  %a = qcc.neg(%x) : f32[4]
  %b = qcc.neg(%a) : f32[4]
  %y = qcc.relu(%b) : f32[4]
  return %y
}
"""


@pytest.fixture
def plugin():
    load_plugin(EXAMPLES / "my_passes.py")
    yield
    # keep the registry as other tests expect it; reloading the same file is a no-op
    

def test_plugin_pass_changes_ir_as_it_says(plugin):
    g = parse(NEGS)
    changed = PassManager("fold-double-neg", verify_each=True).run(g)
    assert changed
    assert [n.op for n in g.nodes] == ["relu"]
    assert g.nodes[0].inputs[0] is g.inputs[0]


def test_class_pass_option_and_spec(plugin):
    g = parse(NEGS)
    pm = PassManager("clamp-relu{max=4.5}", verify_each=True)
    ctx = PassContext()
    pm.run(g, ctx)
    clip = g.nodes[-1]
    assert clip.op == "clip" and clip.attrs == {"min": 0.0, "max": 4.5}
    assert g.outputs[0] is clip.output
    assert pm.pipeline == "clamp-relu{max=4.5}"
    assert ctx.report["clamp-relu"]["clamped"] is True
    assert registered_passes()["clamp-relu"].origin.startswith("plugin ")


def test_duplicate_pass_name_names_both_origins(plugin, tmp_path):
    dup = tmp_path / "dup.py"
    dup.write_text("from qcc import register_pass\n"
                   "@register_pass('fold-double-neg')\n"
                   "def again(graph, ctx):\n    return False\n")
    with pytest.raises(PassError) as e:
        load_plugin(dup)
    msg = str(e.value)
    assert "registered twice" in msg and "my_passes.py" in msg and "dup.py" in msg


def test_builtin_duplicate_is_rejected():
    with pytest.raises(PassError, match="built-in"):
        @register_pass("canonicalize")
        def mine(graph, ctx):
            return False


def test_function_pass_options():
    @register_pass("test-count-ops")
    def count(graph, ctx, *, op: str = "relu", limit: int = 3) -> bool:
        """Count ops of one kind into the report."""
        ctx.report["count"] = (op, limit, sum(n.op == op for n in graph.nodes))
        return False

    try:
        ctx = PassContext()
        pm = PassManager("test-count-ops{op=neg limit=7}")
        assert not pm.run(parse(NEGS), ctx)
        assert ctx.report["count"] == ("neg", 7, 2)
        assert pm.pipeline == "test-count-ops{op=neg limit=7}"
        with pytest.raises(PassError, match="expected an integer"):
            parse_pipeline("test-count-ops{limit=many}")
        with pytest.raises(PassError, match="has no option 'nope'.*op, limit"):
            parse_pipeline("test-count-ops{nope=1}")
    finally:
        unregister_pass("test-count-ops")


@pytest.mark.parametrize("text,msg", [
    ("no-such-pass", "unknown pass 'no-such-pass'"),
    ("canonicalise", "did you mean 'canonicalize'"),
    ("canonicalize{max-iters=2", "unbalanced"),
    ("canonicalize{max-iters}", "needs a value"),
    ("canonicalize{fold=maybe}", "expected true or false"),
    ("round-weights{exclude='head*}", "unclosed '"),
    ("insert-observers{method=nope}", "unknown calibration method 'nope'"),  # as read, not mid-run
])
def test_bad_pipelines(text, msg):
    with pytest.raises(PassError, match=msg):
        parse_pipeline(text)


def test_pipeline_text_roundtrips():
    ps = parse_pipeline(" canonicalize{max-iters=3}, canonicalize ")
    assert pipeline_text(ps) == "canonicalize{max-iters=3},canonicalize"
    assert pipeline_text(parse_pipeline(pipeline_text(ps))) == pipeline_text(ps)


def test_quoted_option_values_keep_separators_and_lose_their_quotes():
    """The documented form `exclude='glob;glob'` once kept its quotes in the value, so the
    first and last globs matched no layer (silently), and a value could hold no space or
    comma; --print-pipeline quotes such a value so the text parses back to the same pass."""
    (rw,) = parse_pipeline("round-weights{exclude='head*;fc*'}")
    assert rw.exclude == "head*;fc*"
    ps = parse_pipeline("insert-observers{per-tensor=\"conv 1*:minmax,fc{2}*:mse\" percentile=99.9},canonicalize")
    assert [p.name for p in ps] == ["insert-observers", "canonicalize"]
    assert ps[0].per_tensor == "conv 1*:minmax,fc{2}*:mse" and ps[0].percentile == 99.9
    assert pipeline_text(parse_pipeline(pipeline_text(ps))) == pipeline_text(ps)
    assert parse_pipeline(pipeline_text(ps))[0].per_tensor == ps[0].per_tensor
    # an unquoted value prints as it was given
    assert pipeline_text(parse_pipeline("round-weights{exclude=head*;fc*}")) == "round-weights{exclude=head*;fc*}"


def test_optimization_levels_are_pipeline_strings():
    assert set(PIPELINES) == {"O0", "O1", "O2", "O3"}
    assert PIPELINES["O0"] == "canonicalize"
    assert PIPELINES["O2"].split(",")[-2] == "fold-requantize"


def test_failure_inside_a_pass_names_it_and_history():
    @register_pass("test-boom")
    def boom(graph, ctx):
        raise RuntimeError("kaboom")

    try:
        with pytest.raises(PassFailure, match=r"in pass test-boom \(after canonicalize, canonicalize\): kaboom"):
            PassManager("canonicalize,canonicalize,test-boom").run(parse(NEGS))
    finally:
        unregister_pass("test-boom")


def test_verify_each_catches_a_pass_that_breaks_the_ir():
    @register_pass("test-break")
    def breaker(graph, ctx):
        graph.nodes[0].output.type = graph.nodes[0].output.type.with_dtype("i8")
        return True

    try:
        with pytest.raises(PassFailure, match="in pass test-break: the IR is invalid afterwards"):
            PassManager("test-break", verify_each=True).run(parse(NEGS))
        PassManager("test-break", verify_each=False).run(parse(NEGS))  # unchecked: no error
    finally:
        unregister_pass("test-break")


def test_requirements_are_ir_properties():
    @register_pass
    @dataclasses.dataclass(frozen=True)
    class NeedsRanges(Pass):
        name = "test-needs-ranges"
        requires = frozenset({"test-ranged"})

        def run(self, graph, ctx):
            return False

    @register_pass
    @dataclasses.dataclass(frozen=True)
    class GivesRanges(Pass):
        name = "test-gives-ranges"
        produces = frozenset({"test-ranged"})

        def run(self, graph, ctx):
            return False

    try:
        with pytest.raises(PassFailure, match="needs the IR to be 'test-ranged'.*run test-gives-ranges first"):
            PassManager("test-needs-ranges").run(parse(NEGS))
        PassManager("test-gives-ranges,test-needs-ranges").run(parse(NEGS))
    finally:
        unregister_pass("test-needs-ranges")
        unregister_pass("test-gives-ranges")


def test_instruments(tmp_path, plugin):
    g = parse(NEGS)
    out, times = io.StringIO(), io.StringIO()
    pm = PassManager("fold-double-neg,canonicalize", instruments=[
        PrintIRAfter(["fold-double-neg"], out), DumpDir(tmp_path / "dump"), TimePasses(times)])
    pm.run(g)
    assert "IR after fold-double-neg" in out.getvalue() and "IR after canonicalize" not in out.getvalue()
    assert sorted(p.name for p in (tmp_path / "dump").iterdir()) == ["001-fold-double-neg.qir", "002-canonicalize.qir"]
    assert parse((tmp_path / "dump" / "001-fold-double-neg.qir").read_text())
    assert "fold-double-neg" in times.getvalue() and "total" in times.getvalue()


def test_stop_after():
    g = parse(NEGS)
    pm = PassManager("canonicalize{max-iters=1},canonicalize", stop_after="canonicalize")
    ctx = PassContext()
    pm.run(g, ctx)
    assert ctx.history == ["canonicalize"]


def test_entry_point_passes(tmp_path, monkeypatch):
    """A package installed with an entry point in group `qcc.passes` contributes its pass."""
    import importlib.metadata
    import qcc.passes_registry as reg

    pkg = tmp_path / "qcc_extra_passes"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import dataclasses\nfrom qcc import Pass\n"
        "@dataclasses.dataclass(frozen=True)\n"
        "class Noop(Pass):\n    '''Does nothing, from an installed package.'''\n    name = 'ep-noop'\n"
        "    def run(self, graph, ctx):\n        return False\n")
    dist = tmp_path / "qcc_extra_passes-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: qcc-extra-passes\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[qcc.passes]\nnoop = qcc_extra_passes:Noop\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(reg, "_loaded_entry_points", False)
    try:
        info = reg.registered_passes()["ep-noop"]
        assert "entry point 'noop'" in info.origin
        assert info.summary == "Does nothing, from an installed package."
        assert not PassManager("ep-noop").run(parse(NEGS))
    finally:
        unregister_pass("ep-noop")


@pytest.mark.parametrize("module", ["equalize", "smooth", "align_input_grid"])
def test_a_builtin_pass_module_imports_first(module):
    """A custom pass reusing a built-in's helpers may import that module before anything else
    of qcc: registering it must not import the other built-ins mid-way (smooth imports from
    equalize, which would be half-initialized)."""
    import subprocess
    import sys

    code = f"import qcc.passes.{module}; from qcc.passes_registry import get_pass; get_pass('smooth')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr.strip().splitlines()[-1]
