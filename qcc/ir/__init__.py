"""The graph IR: types, values, nodes, the op registry, the text form and the verifier."""
from .types import QuantParams, TensorType, DTYPES, int_range, int_dtype, to_numpy_dtype, from_numpy_dtype
from .opdef import Attr, OpDef, register_op, get_op, all_ops
from .graph import Graph, Node, Value
