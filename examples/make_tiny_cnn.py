"""Write examples/tiny_cnn.onnx (+ an input and calibration set): a small, deterministic
CNN with the layers real mobile nets have (conv + batch norm + relu, depthwise conv,
residual add, pooling, a classifier head). Re-run to regenerate; the files are committed.
"""
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).parent


def build() -> onnx.ModelProto:
    rng = np.random.default_rng(42)

    def w(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        w("c1.w", 16, 3, 3, 3), w("c1.b", 16),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 16).astype(np.float32), "bn.scale"),
        w("bn.bias", 16, scale=0.1), w("bn.mean", 16, scale=0.1),
        numpy_helper.from_array(rng.uniform(0.5, 2.0, 16).astype(np.float32), "bn.var"),
        w("dw.w", 16, 1, 3, 3), w("dw.b", 16),
        w("pw.w", 16, 16, 1, 1, scale=0.2),
        w("fc.w", 10, 16, scale=0.5), w("fc.b", 10),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "c1.w", "c1.b"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r1"]),
        helper.make_node("Conv", ["r1", "dw.w", "dw.b"], ["dw"], pads=[1, 1, 1, 1], group=16),
        helper.make_node("Relu", ["dw"], ["r2"]),
        helper.make_node("Conv", ["r2", "pw.w"], ["pw"]),
        helper.make_node("Add", ["pw", "r1"], ["res"]),
        helper.make_node("GlobalAveragePool", ["res"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="qcc-examples",
                              ir_version=8)  # onnxruntime reads IR versions up to 13
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    onnx.save(build(), HERE / "tiny_cnn.onnx")
    rng = np.random.default_rng(0)
    np.savez(HERE / "tiny_cnn_input.npz", input=rng.standard_normal((1, 3, 32, 32)).astype(np.float32))
    np.savez(HERE / "tiny_cnn_calib.npz", input=rng.standard_normal((16, 3, 32, 32)).astype(np.float32))
    print("wrote", HERE / "tiny_cnn.onnx")
