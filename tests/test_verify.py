"""The verifier rejects each kind of malformed graph, naming what is wrong."""
from __future__ import annotations

import numpy as np
import pytest

from qcc.ir import Graph, QuantParams, TensorType
from qcc.ir.verify import VerifyError, verify

F4 = TensorType((4,), "f32")


def chain():
    g = Graph()
    x = g.add_input("x", F4)
    a = g.add_node("neg", [x], names=["a"])
    b = g.add_node("relu", [a.output], names=["b"])
    g.set_outputs([b.output])
    return g, x, a, b


def test_valid_graph_passes_and_nx_view():
    g, x, a, b = chain()
    verify(g)
    nxg = g.nx()
    assert list(nxg.successors(a)) == [b]
    import networkx as nx

    assert nx.is_directed_acyclic_graph(nxg)


def test_operand_from_another_graph():
    g, x, a, b = chain()
    other = Graph()
    y = other.add_input("y", F4)
    g.add_node("exp", [y], names=["e"])
    with pytest.raises(VerifyError, match="operand %y is not defined in this graph"):
        verify(g)


def test_not_topologically_ordered():
    g, x, a, b = chain()
    g.add_node("exp", [b.output], names=["early"], before=a)
    with pytest.raises(VerifyError, match="defined later"):
        verify(g)
    g.topo_sort()
    verify(g)


def test_cycle():
    g, x, a, b = chain()
    a.set_input(0, b.output)
    with pytest.raises(VerifyError, match="defined later .* or a cycle"):
        verify(g)
    with pytest.raises(ValueError, match="cycle"):
        g.topo_sort()


def test_result_type_mismatch():
    g, x, a, b = chain()
    b.output.type = TensorType((5,), "f32")
    with pytest.raises(VerifyError, match=r"result type f32\[5\] does not match inferred f32\[4\]"):
        verify(g)


def test_attribute_errors():
    g = Graph()
    x = g.add_input("x", TensorType((1, 2, 3), "f32"))
    n = g.add_node("transpose", [x], {"perm": [2, 1, 0]})
    g.set_outputs([n.output])
    verify(g)
    n.attrs["perm"] = "abc"
    with pytest.raises(VerifyError, match="attribute 'perm': expected ints"):
        verify(g)
    del n.attrs["perm"]
    with pytest.raises(VerifyError, match="missing attribute 'perm'"):
        verify(g)


def test_arity():
    g = Graph()
    x = g.add_input("x", F4)
    n = g.add_node("add", [x, x])
    g.set_outputs([n.output])
    verify(g)
    n.inputs.append(None)
    with pytest.raises(VerifyError, match="takes 2 operands, got 3"):
        verify(g)


@pytest.mark.parametrize("dtype,q,msg", [
    ("f32", QuantParams(8, True, 0.1), "not an integer type"),
    ("u8", QuantParams(8, True, 0.1), "quant params say i8, the value is u8"),
    ("i8", QuantParams(8, True, [0.1, 0.2, 0.3], axis=0), "3 per-channel scales for 4 channels"),
    ("i8", QuantParams(8, True, [0.1] * 4, axis=1), "axis 1 out of range"),
    ("i8", QuantParams(8, True, 0.1, 200), "zero point 200 outside i8"),
    ("i8", QuantParams(8, True, float("nan")), "not a positive finite"),
])
def test_quant_params_consistent_with_dtype(dtype, q, msg):
    g = Graph()
    x = g.add_input("x", TensorType((4,), dtype), q)
    g.set_outputs([x])
    with pytest.raises(VerifyError, match=msg):
        verify(g)


def test_stale_use_list():
    g, x, a, b = chain()
    b.inputs[0] = x  # bypassing set_input leaves the use lists wrong
    with pytest.raises(VerifyError, match="use list of %x is out of date"):
        verify(g)


def test_undefined_output():
    g, x, a, b = chain()
    other = Graph()
    g.set_outputs([other.add_input("z", F4)])
    with pytest.raises(VerifyError, match="graph output %z is not defined"):
        verify(g)


def test_constant_data_must_match_type():
    g, x, a, b = chain()
    c = g.add_const("c", np.zeros(4, np.float32))
    c.type = TensorType((4,), "i32")
    with pytest.raises(VerifyError, match="constant %c"):
        verify(g)


def test_mutation_keeps_uses_right():
    g, x, a, b = chain()
    assert x.uses == [(a, 0)]
    g.replace_value(a.output, x)
    assert x.uses == [(a, 0), (b, 0)] and a.output.uses == []
    assert g.eliminate_dead_code()
    assert [n.op for n in g.nodes] == ["relu"] and x.uses == [(b, 0)]
    verify(g)
    with pytest.raises(ValueError, match="still used"):
        g.remove_node(b)
