"""Multiply-accumulates (MACs) of one inference of an ONNX classifier, read from the graph's shapes.

`count_macs(path, batch=, seq=)` fixes the graph inputs' dynamic dims (dim 0 = batch, dim 1 =
sequence), infers every tensor's shape and adds up the MACs of the matrix-multiply nodes:

- MatMul-like (MatMul, MatMulInteger, MatMulInteger16, MatMulIntegerToFloat, DynamicQuantizeMatMul,
  QLinearMatMul, FusedMatMul, MatMulNBits, Gemm, QGemm, FusedGemm, GemmFastGelu): numel(output) x K,
  i.e. M*N*K with the (broadcast) batch dims multiplied in.
- com.microsoft Attention (inputs: input [B,S,D_in], weights [D_in, Dq+Dk+Dv], bias, mask_index, past
  [2,B,N,P,h], ...; ORT 1.32's own contrib schema) and QAttention (input, weight, bias, input_scale,
  weight_scale, mask_index, input_zero_point, weight_zero_point, past): the QKV projection
  B*S*D_in*(Dq+Dk+Dv), Q.K^T B*S*T*Dq and attention.V B*S*T*Dv with T = S + P. `num_heads` is read
  and checked, but does not change the count (heads x head_size = hidden). QAttention's projection
  runs in integer kernels; its Q.K^T and attention.V run in fp32.
- MultiHeadAttention (separate or packed Q/K/V, no projection inside): Q.K^T and attention.V.
- Conv / ConvInteger / QLinearConv / FusedConv: numel(output) x C_in/group x kernel size; two-operand
  Einsum: the product of all index sizes.
- Gather, EmbedLayerNormalization, QEmbedLayerNormalization: lookups, 0 MACs; so are element-wise
  ops, layer norms, softmax, GELU and (de)quantization.

"int8" counts MACs run by integer kernels (MatMulInteger*, MatMulIntegerToFloat, DynamicQuantizeMatMul,
QLinearMatMul, QGemm, ConvInteger, QLinearConv, QAttention's projection, and a MatMul/Gemm/Conv whose
two inputs both come from DequantizeLinear, which ONNX Runtime's QDQ fusion runs as an integer
kernel); "fp32" the rest (MatMulNBits included: its default accuracy level computes in fp32).

Shapes: ONNX Runtime's symbolic shape inference first (it knows the contrib ops the transformer
optimizer writes, but not the quantized ones: QEmbedLayerNormalization/QAttention stop it); if it
leaves a MAC node unresolved, the graph is run once in ONNX Runtime (graph optimizations off) on dummy inputs of the given
shape and every intermediate tensor's shape is read (one inference, every intermediate tensor held
at once: cheap for a classifier at one sequence); if that fails too, ONNX's own shape inference
(standard ops only). A MAC node whose shapes stay unresolved is listed in `unknown_ops`
("OpType (node name)") and counts 0; so is an op that may be a matmul but has no rule here (LSTM,
GRU, Einsum with an ellipsis, nodes inside If/Loop/Scan bodies are not visited).

Graphs with a string input (an end-to-end graph, a tokenizer op such as ai.onnx.contrib's
BertTokenizer in front of the classifier): only the classifier part is counted. It starts at the
tensors named in `inputs=`, or, by default, where each tokenizer output, followed through
Unsqueeze/Reshape/Squeeze/Expand/Cast/Identity nodes, first has rank 2 (a tokenizer output whose
rank the graph does not state is taken to be 1-D, as onnxruntime-extensions' BertTokenizer writes
for one text). Those tensors become int64 [batch, seq] inputs; everything that computes them from
the string input, and any node in a custom (non-ONNX, non-com.microsoft) domain after them, such as
a post-processing op, is dropped. When the walk cannot find rank-2 tensors, pass `inputs=`.

`.ort` files cannot be read by onnx: pass the `.onnx` they were converted from.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger(__name__)

# numel(output) x K; K is A's last dim (its first for Gemm with transA, the K attribute for MatMulNBits)
_MATMUL_LIKE = {
    "MatMul", "MatMulInteger", "MatMulInteger16", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
    "QLinearMatMul", "FusedMatMul", "MatMulNBits", "GemmFastGelu", "Gemm", "QGemm", "FusedGemm",
}
_CONV_W = {"Conv": 1, "ConvInteger": 1, "FusedConv": 1, "QLinearConv": 3}
_ZERO = {"Gather", "GatherElements", "GatherND", "EmbedLayerNormalization", "QEmbedLayerNormalization"}
_INT8 = {"MatMulInteger", "MatMulInteger16", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearMatMul",
         "QGemm", "ConvInteger", "QLinearConv"}
# a MatMul/Gemm/Conv fed by DequantizeLinear on both A and B runs as an integer kernel in ORT (QDQ fusion)
_QDQ_FUSABLE = {"MatMul": (0, 1), "Gemm": (0, 1), "Conv": (0, 1)}
_SUSPECT = ("MatMul", "Gemm", "Attention", "Conv", "Einsum", "LSTM", "GRU", "RNN")
_STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}
_RESHAPE_LIKE = {"Unsqueeze", "Squeeze", "Reshape", "Expand", "Cast", "Identity"}


def count_macs(onnx_path: Path, *, batch: int, seq: int, inputs: Optional[Sequence[str]] = None) -> dict:
    """MACs of one inference at input shape [batch, seq]; see the module docstring for the rules.

    Returns {"total", "int8", "fp32", "by_op": {op_type: macs}, "batch", "seq", "unknown_ops": [...],
    "shapes_from": "symbolic" | "onnxruntime run" | "onnx" | "none"}.
    """
    import onnx

    if batch < 1 or seq < 1:
        raise ValueError(f"batch and seq must be positive, got batch={batch}, seq={seq}")
    if Path(onnx_path).suffix == ".ort":
        raise ValueError(f"{onnx_path}: onnx cannot read an .ort file; pass the .onnx it was converted from")
    model = onnx.load(str(onnx_path))
    model = _classifier_part(model, inputs)
    _fix_inputs(model, batch, seq)
    consts = _constants(model)
    producers = {o: n for n in model.graph.node for o in n.output if o}
    best = None
    for source, shapes in _shape_sources(model, batch, seq):
        result = _count(model, shapes, consts, producers)
        if best is None or len(result[3]) < len(best[1][3]):
            best = (source, result)
        if not result[3]:
            break
        log.debug("shapes from %s leave %d MAC node(s) unresolved; trying the next source", source, len(result[3]))
    if best is None:
        source, (total, int8, by_op, unknown) = "none", _count(model, _initializer_shapes(model), consts, producers)
    else:
        source, (total, int8, by_op, unknown) = best
    if unknown:
        log.warning("%s: MACs of %d node(s) unknown (shapes unresolved or no rule): %s", onnx_path, len(unknown),
                    ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""))
    log.info("%s at [%d, %d]: %.3g MACs (%.0f%% int8; shapes from %s)", Path(onnx_path).name, batch, seq,
             total, 100.0 * int8 / total if total else 0.0, source)
    return {"total": total, "int8": int8, "fp32": total - int8, "by_op": by_op, "batch": batch, "seq": seq,
            "unknown_ops": unknown, "shapes_from": source}


def _count(model, shapes: dict, consts: dict, producers: dict) -> tuple[int, int, dict, list]:
    total = int8 = 0
    by_op: dict[str, int] = {}
    unknown: list[str] = []
    for node in model.graph.node:
        try:
            macs = _node_macs(node, shapes, consts, producers)
        except _Unresolved:
            unknown.append(f"{node.op_type} ({node.name or node.output[0]})")
            continue
        if macs is None:
            continue
        whole, integer = macs
        if whole:
            by_op[node.op_type] = by_op.get(node.op_type, 0) + whole
        total += whole
        int8 += integer
    return total, int8, by_op, unknown


class _Unresolved(Exception):
    pass


# ---------------------------------------------------------------------------------------------- rules


def _node_macs(node, shapes: dict, consts: dict, producers: dict) -> Optional[tuple[int, int]]:
    """(MACs, of which int8) of one node; None for a node with no MACs."""
    op = node.op_type
    if op in _ZERO:
        return None
    if op in _MATMUL_LIKE:
        a = _shape(node, 0, shapes)
        out = _shape_out(node, 0, shapes)
        if op == "MatMulNBits":
            k = _attr(node, "K")
            if k is None:
                raise _Unresolved
        elif op in ("Gemm", "QGemm", "FusedGemm"):
            k = a[0] if _attr(node, "transA", 0) else a[-1]
        elif op == "FusedMatMul":
            k = a[-2] if _attr(node, "transA", 0) and len(a) > 1 else a[-1]
        else:
            k = a[-1]
        macs = math.prod(out) * int(k)
        return macs, macs if op in _INT8 or _qdq(node, producers, consts) else 0
    if op in ("Attention", "QAttention"):
        return _attention(node, shapes)
    if op == "MultiHeadAttention":
        return _mha(node, shapes), 0
    if op in _CONV_W:
        w = _shape(node, _CONV_W[op], shapes)
        out = _shape_out(node, 0, shapes)
        macs = math.prod(out) * math.prod(w[1:])
        return macs, macs if op in _INT8 or _qdq(node, producers, consts) else 0
    if op == "Einsum":
        return _einsum(node, shapes), 0
    if any(s in op for s in _SUSPECT) or op in ("If", "Loop", "Scan"):
        raise _Unresolved  # may hide matmuls; there is no rule for it here
    return None


def _attention(node, shapes: dict) -> tuple[int, int]:
    x = _shape(node, 0, shapes)  # [B, S, D_in]
    w = _shape(node, 1, shapes)  # [D_in, Dq + Dk + Dv]
    if len(x) != 3 or len(w) != 2:
        raise _Unresolved
    b, s, d_in = x
    sizes = _attr(node, "qkv_hidden_sizes")
    dq, _dk, dv = (list(sizes) if sizes else [w[1] // 3] * 3)
    heads = _attr(node, "num_heads")
    if heads and dq % heads:
        log.warning("%s: hidden %d is not a multiple of num_heads %d", node.name, dq, heads)
    past_index = 8 if node.op_type == "QAttention" else 4
    t = s
    if len(node.input) > past_index and node.input[past_index]:
        past = _shape(node, past_index, shapes)  # [2, B, N, P, head_size]
        t += past[3]
    projection = b * s * d_in * w[1]
    attention = b * s * t * dq + b * s * t * dv
    return projection + attention, projection if node.op_type == "QAttention" else 0


def _mha(node, shapes: dict) -> int:
    q = _shape(node, 0, shapes)
    has = [len(node.input) > i and bool(node.input[i]) for i in range(8)]
    if len(q) == 5:  # packed QKV [B, S, N, 3, h]
        b, s, n, _, h = q
        return 2 * b * s * s * n * h
    if len(q) != 3:
        raise _Unresolved
    b, s, dq = q
    if not has[1]:
        raise _Unresolved
    k = _shape(node, 1, shapes)
    if len(k) == 5:  # packed KV [B, L, N, 2, h]
        length, dv = k[1], k[2] * k[4]
    elif len(k) == 4:  # [B, N, L, h]
        length = k[2]
        v = _shape(node, 2, shapes)
        dv = v[1] * v[3]
    else:  # [B, L, D]
        length = k[1]
        dv = _shape(node, 2, shapes)[2]
    if has[6]:
        length += _shape(node, 6, shapes)[2]  # past_key [B, N, P, h]
    return b * s * length * (dq + dv)


def _einsum(node, shapes: dict) -> int:
    eq = _attr(node, "equation", b"")
    eq = eq.decode() if isinstance(eq, bytes) else eq
    lhs = eq.replace(" ", "").split("->")[0].split(",")
    if len(lhs) != 2 or "." in eq:
        raise _Unresolved
    sizes: dict[str, int] = {}
    for i, term in enumerate(lhs):
        shape = _shape(node, i, shapes)
        if len(shape) != len(term):
            raise _Unresolved
        for letter, dim in zip(term, shape):
            sizes[letter] = max(sizes.get(letter, 1), dim)
    return math.prod(sizes.values())


def _qdq(node, producers: dict, consts: dict) -> bool:
    idx = _QDQ_FUSABLE.get(node.op_type)
    if idx is None:
        return False
    for i in idx:
        p = producers.get(node.input[i]) if i < len(node.input) else None
        if p is None or p.op_type != "DequantizeLinear":
            return False
        q = consts.get(p.input[0])
        if q is not None and q.dtype.itemsize != 1:  # a 16-bit QDQ pair is not run as an 8-bit kernel
            return False
    return True


def _shape(node, i: int, shapes: dict) -> tuple[int, ...]:
    if i >= len(node.input) or not node.input[i]:
        raise _Unresolved
    s = shapes.get(node.input[i])
    if s is None:
        raise _Unresolved
    return s


def _shape_out(node, i: int, shapes: dict) -> tuple[int, ...]:
    s = shapes.get(node.output[i]) if i < len(node.output) else None
    if s is None:
        raise _Unresolved
    return s


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# ------------------------------------------------------------------------------------------- shapes


def _shape_sources(model, batch: int, seq: int):
    """Yields (source, {tensor name: concrete shape}), best source first, skipping those that fail."""
    import onnx

    base = _initializer_shapes(model)
    try:
        inferred, complete = _symbolic(model)
        if not complete:
            log.debug("symbolic shape inference is incomplete (an op it does not know); using what it found")
        yield "symbolic", {**base, **_value_shapes(inferred.graph)}
    except Exception as e:  # noqa: BLE001 - it raises bare Exceptions
        log.debug("symbolic shape inference failed (%s); running the graph once for its shapes", e)
    try:
        yield "onnxruntime run", {**base, **_run_shapes(model, batch, seq)}
    except Exception as e:  # noqa: BLE001 - any failure to build or run the session: fall back further
        log.debug("running the graph for shapes failed (%s); ONNX shape inference only", e)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        yield "onnx", {**base, **_value_shapes(inferred.graph)}
    except Exception as e:  # noqa: BLE001
        log.warning("no shape inference worked on this graph (%s)", e)


def _symbolic(model):
    """(model with value_info, whether every shape was inferred) from ONNX Runtime's symbolic inference.

    `SymbolicShapeInference.infer_shapes` writes ./sym_shape_infer_temp.onnx and a .data file into the
    working directory when it cannot finish (a quantized contrib op it does not know), then raises; the
    same steps are run here without that write, keeping the partial result. Should that private API
    change, the public call runs in a scratch directory instead.
    """
    import os
    import tempfile

    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        ssi = SymbolicShapeInference(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess_output_rank, verbose
        run_steps = (ssi._preprocess, ssi._infer_impl, ssi._update_output_from_vi)
    except (AttributeError, TypeError):
        run_steps = None
    if run_steps is not None:
        preprocess, infer, update = run_steps
        preprocess(model)
        complete = False
        while ssi.run_:
            complete = infer()
        update()
        return ssi.out_mp_, bool(complete)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        finally:
            os.chdir(cwd)
    if inferred is None:
        raise RuntimeError("symbolic shape inference returned nothing")
    return inferred, True


def _value_shapes(graph) -> dict:
    out = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if all(d is not None for d in dims):
            out[vi.name] = tuple(int(d) for d in dims)
    return out


def _initializer_shapes(model) -> dict:
    shapes = {i.name: tuple(int(d) for d in i.dims) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            shapes[n.output[0]] = tuple(int(d) for d in n.attribute[0].t.dims)
    return shapes


def _run_shapes(model, batch: int, seq: int) -> dict:
    """Shapes of every tensor from one ONNX Runtime run on dummy inputs (ids 0, mask 1)."""
    import numpy as np
    import onnx

    from export.sessions import session

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in m.graph.node:
        for o in n.output:
            if o and o not in have:
                m.graph.output.append(onnx.ValueInfoProto(name=o))
                have.add(o)
    sess = session(m.SerializeToString(), threads=1, level="disable", quiet=True)
    dtypes = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32}
    feed = {}
    for i in sess.get_inputs():
        if i.type not in dtypes:
            raise RuntimeError(f"input {i.name} of type {i.type}: no dummy value")
        shape = [d if isinstance(d, int) else (batch, seq)[k] if k < 2 else 1 for k, d in enumerate(i.shape)]
        feed[i.name] = (np.ones if "mask" in i.name else np.zeros)(shape, dtype=dtypes[i.type])
    names = [o.name for o in sess.get_outputs()]
    return {name: tuple(int(d) for d in np.shape(v)) for name, v in zip(names, sess.run(names, feed))}


def _constants(model) -> dict:
    """Small constant tensors (axes, shapes, zero points) as arrays; big weights as (dtype, shape) stubs."""
    import numpy as np
    from onnx import helper, numpy_helper

    consts = {}
    tensors = [(i.name, i) for i in model.graph.initializer]
    tensors += [(n.output[0], n.attribute[0].t) for n in model.graph.node
                if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"]
    for name, t in tensors:
        if math.prod(t.dims) <= 4096:
            consts[name] = numpy_helper.to_array(t)
        else:
            consts[name] = np.empty(0, dtype=helper.tensor_dtype_to_np_dtype(t.data_type))
    return consts


# ------------------------------------------------------------------------------------ graph surgery


def _fix_inputs(model, batch: int, seq: int) -> None:
    """Set every graph input's dynamic dim 0 to batch and dim 1 to seq (other dims must be fixed already).

    A token input (integer, rank 2) whose dims are fixed to other values is an error: the count would
    not be of [batch, seq]. Other inputs keep their fixed dims.
    """
    import onnx

    integer = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}
    inits = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        dims = t.shape.dim
        for k, d in enumerate(dims):
            want = (batch, seq)[k] if k < 2 else None
            if d.HasField("dim_value"):
                if want is not None and d.dim_value != want and t.elem_type in integer and len(dims) == 2:
                    raise ValueError(f"input {vi.name} has a fixed dim {k} of {d.dim_value}, "
                                     f"not the requested {('batch', 'seq')[k]} {want}")
            elif want is not None:
                d.dim_value = want
            else:
                log.warning("input %s: dynamic dim %d left unresolved", vi.name, k)


def _classifier_part(model, inputs: Optional[Sequence[str]]):
    """The graph from `inputs` (or the rank-2 tokenizer outputs of a string-input graph) onwards."""
    import onnx

    graph = model.graph
    # One list of the node wrappers for the whole function: protobuf may hand out a new wrapper object
    # on each access to graph.node, and the sets below key nodes by id().
    nodes = list(graph.node)
    inits = {i.name for i in graph.initializer}
    string_inputs = [i.name for i in graph.input
                     if i.type.tensor_type.elem_type == onnx.TensorProto.STRING and i.name not in inits]
    if inputs is None and not string_inputs:
        return model
    cut = list(inputs) if inputs is not None else _tokenizer_outputs(model, set(string_inputs))
    graph_inputs = {i.name for i in graph.input if i.name not in inits}
    cut_set = set(cut)
    # front end: nodes that depend on the original inputs and feed the cut tensors
    from_inputs = _forward(nodes, graph_inputs)
    producer = {o: n for n in nodes for o in n.output if o}
    front, stack = set(), [c for c in cut if c in producer]
    while stack:
        n = producer[stack.pop()]
        if id(n) in front or id(n) not in from_inputs:
            continue
        front.add(id(n))
        stack.extend(i for i in n.input if i in producer and i not in cut_set)
    # post-processing: custom-domain nodes after the classifier, and what depends on them
    rest = [n for n in nodes if id(n) not in front]
    custom = [n for n in rest if n.domain not in _STANDARD_DOMAINS]
    post = _forward(rest, {o for n in custom for o in n.output}) | {id(n) for n in custom}
    kept = [n for n in rest if id(n) not in post]
    dropped_inputs = {i for n in nodes if id(n) in post for i in n.input}
    graph_outputs = {g.name for g in graph.output}
    outputs = [o for n in kept for o in n.output if o and (o in dropped_inputs or o in graph_outputs)]
    if not outputs:
        raise ValueError("no classifier output left after cutting the graph; pass inputs= explicitly")
    log.info("counting the classifier part: inputs %s, %d of %d nodes", cut, len(kept), len(nodes))

    new = onnx.helper.make_graph(
        kept, graph.name,
        [onnx.helper.make_tensor_value_info(c, onnx.TensorProto.INT64, ["batch", "sequence"]) for c in cut],
        [onnx.ValueInfoProto(name=o) for o in dict.fromkeys(outputs)],
        initializer=list(graph.initializer))
    out = onnx.helper.make_model(new, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return out


def _forward(nodes, seeds: set) -> set:
    """ids of the nodes that (transitively) consume any of the seed tensors."""
    reached, tensors = set(), set(seeds)
    for n in nodes:  # graph nodes are topologically sorted
        if any(i in tensors for i in n.input):
            reached.add(id(n))
            tensors.update(o for o in n.output if o)
    return reached


def _tokenizer_outputs(model, string_inputs: set) -> list[str]:
    """The rank-2 tensors the tokenizer hands to the classifier (see the module docstring)."""
    graph = model.graph
    consts = _constants(model)
    nodes = list(graph.node)  # one wrapper per node: tokenizer_ids below keys them by id()
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in graph.value_info
             if vi.type.tensor_type.HasField("shape")}
    # the tokenizer: nodes reading a string input, and custom-domain nodes reading their outputs
    tokenizer, tensors = [], set(string_inputs)
    for n in nodes:
        if any(i in tensors for i in n.input) and (n.domain not in _STANDARD_DOMAINS or
                                                   any(i in string_inputs for i in n.input)):
            tokenizer.append(n)
            tensors.update(n.output)
    tokenizer_ids = {id(n) for n in tokenizer}
    token_outputs = [o for n in tokenizer for o in n.output
                     if o and any(id(c) not in tokenizer_ids for c in consumers.get(o, []))]
    cut: list[str] = []
    for name in token_outputs:
        rank = ranks.get(name, 1)
        while rank != 2:
            users = consumers.get(name, [])
            if len(users) != 1 or users[0].op_type not in _RESHAPE_LIKE:
                raise ValueError(f"cannot find where the classifier starts after tokenizer output {name!r} "
                                 f"(rank {rank}); pass count_macs(..., inputs=[...]) with its input tensors")
            rank = _rank_after(users[0], rank, consts)
            name = users[0].output[0]
            if rank < 0:
                raise ValueError(f"cannot tell the rank of {name!r} after the tokenizer; "
                                 "pass count_macs(..., inputs=[...]) with the classifier's input tensors")
        cut.append(name)
    if not cut:
        raise ValueError("string input but no tokenizer outputs found; pass inputs=[...]")
    return list(dict.fromkeys(cut))


def _rank_after(node, rank: int, consts: dict) -> int:
    op = node.op_type
    if op in ("Cast", "Identity"):
        return rank
    if op in ("Unsqueeze", "Squeeze"):
        axes = _attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1] in consts:
            axes = consts[node.input[1]].reshape(-1).tolist()
        if axes is None:
            return -1  # Squeeze of all 1-dims: unknown
        return rank + len(axes) if op == "Unsqueeze" else rank - len(axes)
    if len(node.input) > 1 and node.input[1] in consts:  # Reshape, Expand: the shape tensor's length
        n = int(consts[node.input[1]].size)
        return max(rank, n) if op == "Expand" else n
    return -1
