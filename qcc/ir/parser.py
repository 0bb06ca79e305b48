"""Parse .qir text (grammar: qir.lark) back into a Graph.

The lark Transformer turns the parse tree into plain tuples that remember their
line and column; `_build` then creates the graph statement by statement, so an
undefined value, a redefinition or a graph the verifier rejects is reported at
the line that caused it: `model.qir:12:3: error: %x is used before it is defined`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

import numpy as np
from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from .graph import Graph
from .types import QuantParams, TensorType, int_range, INT_INFO, to_numpy_dtype


class QirError(Exception):
    """A one-line, positioned error in .qir text."""

    def __init__(self, msg: str, file: str = "<qir>", line: int = 0, col: int = 0):
        self.file, self.line, self.col, self.msg = file, line, col, msg
        super().__init__(f"{file}:{line}:{col}: error: {msg}")


_GRAMMAR = (Path(__file__).with_name("qir.lark")).read_text()
_PARSER = Lark(_GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=False)

_TOKEN_NAMES = {
    "VALUE": "a %value", "SYMBOL": "an @name", "OPNAME": "an op name like qcc.conv", "KEY": "a name",
    "INT": "an integer", "FLOAT": "a number", "STRING": "a string", "DTYPE": "a dtype (f32, i8, ...)",
    "LPAR": "'('", "RPAR": "')'", "LBRACE": "'{'", "RBRACE": "'}'", "LSQB": "'['", "RSQB": "']'",
    "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "LESSTHAN": "'<'", "MORETHAN": "'>'",
}


def _name(tok: str) -> str:
    body = tok[1:]
    return json.loads(body) if body.startswith('"') else body


def _pos(meta):
    return (getattr(meta, "line", 0), getattr(meta, "column", 0))


@v_args(inline=True)
class _ToAst(Transformer):
    def int_(self, t):
        return int(t)

    def float_(self, t):
        return float(t)

    def string(self, t):
        return json.loads(t)

    def true(self):
        return True

    def false(self):
        return False

    def list(self, *items):
        return [i for i in items if i is not None]

    def sidecar(self, t):
        return ("sidecar", _name(t))

    def dense(self, lst):
        return ("dense", lst)

    def type(self, dtype, *dims):
        return TensorType(tuple(int(d) for d in dims if d is not None), str(dtype))

    def tensor(self, lst, t):
        return _dense_array(lst, t)

    def value_ref(self, t):
        return ("ref", _name(t), t.line, t.column)

    def no_value(self):
        return None

    def attr(self, k, v):
        return (str(k), v)

    def attrs(self, *items):
        return dict(i for i in items if i is not None)

    def qfield(self, k, v):
        return (str(k), v)

    @v_args(inline=True, meta=True)
    def quant(self, meta, dtype, *fields):
        return ("quant", str(dtype), dict(f for f in fields if f is not None), _pos(meta))

    def result(self, t, q=None):
        return (t, q)

    def operands(self, *ops):
        return ("operands", list(ops))


def _dense_array(lst, t: TensorType) -> np.ndarray:
    dt = np.float32 if t.dtype == "bf16" else t.np_dtype
    arr = np.array(lst, dtype=np.float64 if t.dtype in ("f32", "f16", "f64", "bf16") else None)
    if arr.size != t.size:
        raise ValueError(f"dense data has {arr.size} elements, type {t} needs {t.size}")
    return arr.astype(dt).astype(t.np_dtype).reshape(t.shape)


class _Builder:
    def __init__(self, file: str, sidecar: Optional[Dict[str, np.ndarray]]):
        self.file = file
        self.sidecar = sidecar
        self.g: Optional[Graph] = None

    def err(self, msg, line=0, col=0):
        return QirError(msg, self.file, line, col)

    def lookup(self, ref):
        _, name, line, col = ref
        if not self.g.has_value(name):
            raise self.err(f"%{name} is used before it is defined", line, col)
        return self.g.value(name)

    def define_check(self, tok: Token) -> str:
        name = _name(tok)
        if self.g.has_value(name):
            raise self.err(f"%{name} is defined twice", tok.line, tok.column)
        return name

    def side(self, key, line, col) -> np.ndarray:
        if self.sidecar is None:
            raise self.err(f"@{key} refers to sidecar data, but there is no .npz next to this file", line, col)
        if key not in self.sidecar:
            raise self.err(f"@{key} is not in the sidecar .npz", line, col)
        return np.asarray(self.sidecar[key])

    def quant(self, q, t: TensorType, line, col) -> Optional[QuantParams]:
        if q is None:
            return None
        params = self._quant(q, t)
        from .graph import Value
        from .verify import _check_quant

        err = _check_quant(Value("?", t, params))
        if err:
            raise self.err(err.split(": ", 1)[-1], *q[3])
        return params

    def _quant(self, q, t: TensorType) -> Optional[QuantParams]:
        _, dtype, fields, (ql, qc) = q
        if dtype not in INT_INFO:
            raise self.err(f"quantized dtype must be an integer type, got {dtype}", ql, qc)
        known = {"axis", "scale", "zp", "range"}
        for k in fields:
            if k not in known:
                raise self.err(f"unknown quant field '{k}' (known: axis, scale, zp, range)", ql, qc)
        if "scale" not in fields:
            raise self.err("quant params need scale=", ql, qc)

        def numbers(v):
            if isinstance(v, tuple) and v[0] == "sidecar":
                return self.side(v[1], ql, qc).tolist()
            return v

        bits, signed = INT_INFO[dtype]
        rng = fields.get("range")
        try:
            return QuantParams(bits, signed, numbers(fields["scale"]), numbers(fields.get("zp", 0)),
                               fields.get("axis"), tuple(rng) if rng is not None else None)
        except (ValueError, TypeError) as e:
            raise self.err(f"bad quant params: {e}", ql, qc) from None

    def build(self, tree) -> Graph:
        gname, *rest = tree.children
        *params_and_stmts, ret = rest
        self.g = Graph(_name(gname))
        for item in params_and_stmts:
            if item is None:
                continue
            line, col = _pos(item.meta)
            try:
                getattr(self, "on_" + item.data)(item, line, col)
            except QirError:
                raise
            except ValueError as e:
                raise self.err(str(e), line, col) from None
        outs = [self.lookup(("ref", _name(t), t.line, t.column)) for t in ret.children]
        self.g.set_outputs(outs)
        return self.g

    def on_param(self, item, line, col):
        tok, t, q = (item.children + [None])[:3]
        name = self.define_check(tok)
        self.g.add_input(name, t, self.quant(q, t, line, col))

    def on_const_stmt(self, item, line, col):
        tok, data, t, q = (item.children + [None])[:4]
        name = self.define_check(tok)
        if data[0] == "sidecar":
            arr = self.side(data[1], line, col)
            if arr.dtype != t.np_dtype and arr.dtype.itemsize == t.np_dtype.itemsize:
                arr = arr.view(t.np_dtype)  # raw bits of bf16
            if tuple(arr.shape) != t.shape or arr.dtype != t.np_dtype:
                raise self.err(f"sidecar array @{data[1]} is {arr.dtype}{list(arr.shape)}, "
                               f"the text says {t}", line, col)
        else:
            arr = _dense_array(data[1], t)
        if t.dtype in ("i4", "u4"):
            lo, hi = int_range(t.dtype)
            if arr.size and (arr.min() < lo or arr.max() > hi):
                raise self.err(f"constant %{name} has values outside {t.dtype}'s range {lo}..{hi}", line, col)
        self.g.add_const(name, arr, t.dtype, self.quant(q, t, line, col), unique=False)

    def on_node_stmt(self, item, line, col):
        ch = item.children
        i = 0
        out_toks = []
        while isinstance(ch[i], Token) and ch[i].type == "VALUE":
            out_toks.append(ch[i])
            i += 1
        opname = str(ch[i])
        i += 1
        operands, attrs, results = [], {}, []
        for c in ch[i:]:
            if isinstance(c, dict):
                attrs = c
            elif isinstance(c, tuple) and c[0] == "operands":
                operands = c[1]
            else:
                results.append(c)
        if len(results) != len(out_toks):
            raise self.err(f"{len(out_toks)} results named but {len(results)} types given", line, col)
        names = [self.define_check(t) for t in out_toks]
        inputs = [None if o is None else self.lookup(o) for o in operands]
        op = opname[4:] if opname.startswith("qcc.") else opname
        node = self.g.add_node(op, inputs, attrs, names=names, types=[t for t, _ in results])
        for out, (t, q) in zip(node.outputs, results):
            out.quant = self.quant(q, t, line, col)
        self.positions[id(node)] = (line, col)


def _describe(e: UnexpectedInput, text: str) -> str:
    if isinstance(e, UnexpectedEOF):
        return "unexpected end of file"
    if isinstance(e, UnexpectedToken):
        got = "end of file" if e.token.type == "$END" else repr(str(e.token))
        exp = sorted({_TOKEN_NAMES.get(x, x.strip('"').lower()) for x in e.expected})
        return f"unexpected {got}, expected {' or '.join(exp[:6])}{' ...' if len(exp) > 6 else ''}"
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else "?"
        return f"unexpected character {ch!r}"
    return str(e).splitlines()[0]


def parse(text: str, file: str = "<qir>", sidecar: Optional[Dict[str, np.ndarray]] = None,
          verify: bool = True) -> Graph:
    """Parse .qir text. Every error is a one-line QirError with file:line:col."""
    try:
        tree = _PARSER.parse(text)
    except UnexpectedInput as e:
        raise QirError(_describe(e, text), file, e.line, e.column) from None
    tree = _ToAst().transform(tree)
    b = _Builder(file, sidecar)
    b.positions = {}
    try:
        g = b.build(tree.children[0])
    except (ValueError, TypeError) as e:
        raise QirError(str(e), file) from None
    if verify:
        from .verify import VerifyError, verify as check

        try:
            check(g)
        except VerifyError as e:
            line, col = b.positions.get(id(e.node), (0, 0)) if e.node is not None else (0, 0)
            raise QirError(e.msg, file, line, col) from None
    return g


def load(path, verify: bool = True) -> Graph:
    """Read a .qir file and its sidecar .npz (if present)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise QirError(f"cannot read: {e.strerror}", str(path)) from None
    except UnicodeDecodeError:
        raise QirError("not a .qir text file (not UTF-8)", str(path)) from None
    npz = path.with_suffix(".npz")
    sidecar = None
    if npz.exists():
        with np.load(npz, allow_pickle=False) as z:
            sidecar = {k: z[k] for k in z.files}
    return parse(text, str(path), sidecar, verify)
