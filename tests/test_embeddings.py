"""Token embeddings as they ship: the gathered table is int8 in the library (one scale per
row), the compiled output is what the interpreter says, and it stays close to float.

The model is a transformer's front: a token Gather from a 2000 x 64 table (512 kB float),
a position table added, layer norm, and a linear layer (MatMul + bias Add), as PyTorch
exports BERT's embeddings."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper as nh

import qcc
from qcc import interp

V, D, T = 2000, 64, 16


def _model():
    rng = np.random.default_rng(5)
    # rows of very different scales: one scale per row keeps the small ones
    table = (rng.normal(0, 1, (V, D)) * rng.uniform(0.01, 2.0, (V, 1))).astype(np.float32)
    inits = [nh.from_array(table, "tok"), nh.from_array(rng.normal(0, 0.5, (1, T, D)).astype(np.float32), "pos"),
             nh.from_array(np.ones(D, np.float32), "g"), nh.from_array(np.zeros(D, np.float32), "b"),
             nh.from_array((rng.normal(0, 1, (D, 32)) / 8).astype(np.float32), "w"),
             nh.from_array(rng.normal(0, 0.1, 32).astype(np.float32), "wb")]
    nodes = [helper.make_node("Gather", ["tok", "ids"], ["e"]),
             helper.make_node("Add", ["e", "pos"], ["ep"]),
             helper.make_node("LayerNormalization", ["ep", "g", "b"], ["n"], axis=-1),
             helper.make_node("MatMul", ["n", "w"], ["m"]),
             helper.make_node("Add", ["wb", "m"], ["y"])]
    graph = helper.make_graph(nodes, "emb", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, T])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, 32])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, table


def _ids(n, seed):
    return np.random.default_rng(seed).integers(0, V, (n, T)).astype(np.int64)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    base = tmp_path_factory.mktemp("emb")
    model, table = _model()
    path = base / "m.onnx"
    path.write_bytes(model.SerializeToString())
    np.savez(base / "calib.npz", ids=_ids(8, 1))
    outs = {lvl: base / lvl for lvl in ("O0", "O1", "O2")}
    for lvl, out in outs.items():
        qcc.compile(path, out, target="x86-avx2", opt_level=lvl,
                    calib=base / "calib.npz" if lvl == "O2" else None)
    return path, table, outs


def test_the_library_keeps_the_table_int8(builds):
    _, table, outs = builds
    so = {lvl: (out / "model.so").stat().st_size for lvl, out in outs.items()}
    saving = table.size * 3 - table.shape[0] * 4  # 4 -> 1 byte, plus a float scale per row
    for lvl in ("O1", "O2"):
        assert so["O0"] - so[lvl] >= 0.8 * saving, (lvl, so, saving)


@pytest.mark.parametrize("level", ["O1", "O2"])
def test_int8_table_output_is_the_interpreters_and_close_to_float(builds, level):
    import onnxruntime

    path, table, outs = builds
    ids = _ids(4, 2)
    ref = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    module = qcc.load(outs[level])
    graph = qcc.load_qir(outs[level] / "model.qir")
    assert any(n.op == "gather" and n.inputs[0].dtype == "i8" for n in graph.nodes)
    for i in range(len(ids)):
        x = ids[i:i + 1]
        want = ref.run(None, {"ids": x})[0]
        got = module.run({"ids": x})["y"]
        said = list(interp.run(graph, {"ids": x}).values())[0]
        span = float(want.max() - want.min())
        assert np.abs(got - said).max() <= 1e-4 * span
        sqnr = 10 * np.log10((want ** 2).sum() / ((got - want) ** 2).sum())
        assert sqnr > (30 if level == "O1" else 20), (level, sqnr)


def test_the_report_lists_the_table(builds):
    import json

    _, table, outs = builds
    r = json.loads((outs["O1"] / "report.json").read_text())
    (entry,) = r["embeddings"].values()
    assert entry["shape"] == [V, D] and entry["bytes_float"] == table.nbytes
    assert entry["bytes_int8"] == table.size + 4 * V
    # per-row scales: the int8 table's own SQNR is that of 8 bits on each row (~40 dB), which
    # one scale for the whole table (rows 0.01x to 2x) would not reach
    assert entry["sqnr_db"] > 38
    assert r["summary"]["size_bytes_quantized"] < r["summary"]["size_bytes_float"] * 0.3


def test_small_tables_and_tables_with_inf_stay_float():
    from qcc.ir import Graph, TensorType
    from qcc.pass_manager import PassManager

    rng = np.random.default_rng(1)
    g = Graph("t")
    ids = g.add_input("ids", TensorType((1, 4), "i64"))
    big = rng.normal(0, 1, (300, 64)).astype(np.float32)
    bad = big.copy()
    bad[7, 3] = np.inf
    outs = [g.add_node("gather", [g.add_const(name, t), ids], {"axis": 0}, names=[name + ".g"]).output
            for name, t in (("big", big), ("bad", bad), ("small", big[:2]))]
    g.set_outputs(outs)
    PassManager("quantize-embeddings{min-bytes=4096}").run(g)
    tables = {n.outputs[0].name: n.inputs[0].dtype for n in g.nodes if n.op == "gather"}
    assert tables == {"big.g.q": "i8", "big.g.s": "f32", "bad.g": "f32", "small.g": "f32"}
    assert [v.name for v in g.outputs] == ["big.g", "bad.g", "small.g"]
