"""Cost facts about nodes that reports and bit-width decisions share (MACs, sizes)."""
from __future__ import annotations

import numpy as np

from .ir.graph import Graph, Node

MAC_OPS = ("conv", "conv_transpose", "gemm", "matmul", "qconv", "qmatmul", "qgemm")


def macs(node: Node) -> int:
    """Multiply-accumulates of one node (0 for ops that do none worth counting)."""
    op = node.op
    if op in ("conv", "qconv"):
        w = node.inputs[1].shape  # O, I/g, k...
        return int(np.prod(node.output.shape, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if op == "conv_transpose":
        x, w = node.inputs[0].shape, node.inputs[1].shape  # w: I, O/g, k...
        return int(np.prod(x, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if op in ("gemm", "qgemm"):
        a = node.inputs[0].shape
        k = a[0] if node.attrs.get("trans_a", 0) else a[1]
        return int(np.prod(node.output.shape, dtype=np.int64) * k)
    if op in ("matmul", "qmatmul"):
        a = node.inputs[0].shape
        return int(np.prod(node.output.shape, dtype=np.int64) * a[-1])
    return 0


def total_macs(g: Graph) -> int:
    return sum(macs(n) for n in g.nodes)


def weight_bytes(g: Graph) -> int:
    """Bytes of constant data as the artifact stores it (sub-byte ints packed)."""
    total = 0
    for c in g.constants.values():
        if c.dtype in ("i4", "u4"):
            total += (c.type.size + 1) // 2
        else:
            total += c.type.nbytes
    return total
