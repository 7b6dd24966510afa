"""4-bit word embeddings: the word-embedding Gather becomes ONNX Runtime's `GatherBlockQuantized` (com.microsoft).

The word-embedding table is most of a small student's bytes (~75% of the int8 file for 2 layers x 384).
ONNX Runtime's own weight-only quantizer (`MatMulNBitsQuantizer`, DEFAULT algorithm, QOperator format)
quantizes it to 4-bit integers in blocks of `block_size` consecutive hidden values, each block with a float
scale and (unless symmetric) a 4-bit zero point. Only that one Gather is quantized; the rest is left for
`export.quantize.dynamic`, which runs after this pass (unfused fp32 -> `word_embeddings_4bit` -> dynamic int8):
`quantize_dynamic` has no quantizer for GatherBlockQuantized, so it copies it as is and quantizes the MatMuls
and the small position / token-type Gathers as it always does.

What the tool writes, and what this module changes (matmul_nbits_quantizer.py, onnxruntime 1.32):
- node selection there is `name in nodes_to_include OR op_type in op_types_to_quantize`, and "Gather" must be
  in op_types_to_quantize, so every Gather with a constant table (position and token-type embeddings too)
  would be quantized: the other Gathers are passed as nodes_to_exclude.
- the tool stores the table (and zero points) as ONNX INT4/UINT4 tensors and for that rewrites the opset
  number to 21 and the IR version to 10. The ORT format (.ort, ONNX Runtime Mobile) has no 4-bit tensor type
  in 1.32: the conversion writes a file that fails to load ("Unsupported tensor data type '<unknown>'").
  GatherBlockQuantized also takes uint8 data holding two 4-bit values per byte (low nibble first, `bits=4`),
  zero points packed the same way per row, and a default zero point of 8 when none is given. So by default
  the tool's tensors are re-stored in that uint8 form (same values; symmetric INT4 q becomes q + 8 with the
  zero point input omitted) and the model keeps its own opset and IR version; the .ort conversion then
  works. `int4_types=True` keeps the tool's INT4/UINT4 tensors, after converting the graph to opset 21 with
  ONNX's version converter (not just renumbering it): that file runs in ONNX Runtime but cannot become .ort.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from distill.errors import ExportError

log = logging.getLogger(__name__)

INT4_OPSET = 21  # first ONNX opset with INT4/UINT4 tensors
OP = "GatherBlockQuantized"


def word_embeddings_4bit(src: Path, dst: Path, *, block_size: int = 32, symmetric: bool = False,
                         int4_types: bool = False) -> dict:
    """Write dst: src with its word-embedding Gather replaced by a 4-bit GatherBlockQuantized.

    src is an fp32 classifier as optimum's main_export writes it (unfused; input_ids in, logits out).
    block_size (a power of two >= 16 that divides the hidden size) is the number of consecutive hidden values
    sharing one scale (and one zero point unless symmetric). Returns {"node", "rows", "dim", "block_size",
    "symmetric", "storage", "bytes_before", "bytes_after"}: bytes_before is the fp32 table, bytes_after the
    packed 4-bit data plus scales plus zero points.
    """
    import onnx

    src, dst = Path(src), Path(dst)
    if block_size < 16 or block_size & (block_size - 1):
        raise ExportError(f"4-bit word embeddings need a block size that is a power of two of at least 16 "
                          f"(ONNX Runtime's GatherBlockQuantized); got {block_size}. Use 16, 32, 64 or 128.")
    model = onnx.load(str(src))
    node, table = _word_embedding_gather(model, src)
    rows, dim = (int(d) for d in table.dims)
    if dim % block_size:
        raise ExportError(f"{src}: the word embeddings are {dim} wide, which block size {block_size} does not "
                          f"divide, so the last block of every row would be short. Choose a power of two of at "
                          f"least 16 that divides {dim}.")
    _name_nodes(model)
    name, output = node.name, node.output[0]
    others = [n.name for n in model.graph.node if n.op_type == "Gather" and n.name != name]
    opsets = {o.domain: o.version for o in model.opset_import}
    ir_version = model.ir_version
    if int4_types:
        model = _to_opset(model, src)

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    log.info("4-bit word embeddings: %s (%d x %d), block %d, %s, %s", name, rows, dim, block_size,
             "symmetric" if symmetric else "asymmetric", "INT4 tensors" if int4_types else "uint8-packed")
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=symmetric,
                                     op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),),
                                     nodes_to_include=[name], nodes_to_exclude=others)
    with _quiet_tool():
        quantizer.process()
    out = quantizer.model.model

    qnodes = [n for n in out.graph.node if n.op_type == OP]
    if len(qnodes) != 1 or qnodes[0].output[0] != output or any(n.name == name for n in out.graph.node):
        raise ExportError(f"ONNX Runtime's quantizer did not replace {name} in {src} by exactly one {OP} "
                          f"(it made {len(qnodes)}). Keep the int8 word embeddings (leave out the 4-bit pass) "
                          "and report this with the model.")
    qnode = qnodes[0]
    if not int4_types:
        _to_uint8(out, qnode, symmetric)
        # the tool renumbered the opset for its INT4 tensors only; none are left, so the model keeps its own
        for o in out.opset_import:
            if o.domain in opsets:
                o.version = opsets[o.domain]
        out.ir_version = ir_version
    inits = {i.name: i for i in out.graph.initializer}
    after = sum(_nbytes(inits[i]) for i in qnode.input if i in inits)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(out, str(dst))
    before = rows * dim * 4
    log.info("word embeddings %s: %.2f MB fp32 -> %.2f MB 4-bit, wrote %s", name, before / 1e6, after / 1e6, dst)
    return {"node": name, "rows": rows, "dim": dim, "block_size": block_size, "symmetric": symmetric,
            "storage": "int4" if int4_types else "uint8", "bytes_before": before, "bytes_after": after}


def dequantize(model, node) -> "np.ndarray":  # noqa: F821 - numpy imported lazily
    """The fp32 table a GatherBlockQuantized node (gather_axis 0, quantize_axis 1) stands for, from its
    initializers: (q - zero_point) * scale per block. For checks and tests."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    block = attrs["block_size"]
    data = inits[node.input[0]]
    scales = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
    zp_init = inits.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if data.data_type == onnx.TensorProto.UINT8:
        q = _unpack(numpy_helper.to_array(data))[:, :scales.shape[1] * block]
        zp = _unpack(numpy_helper.to_array(zp_init))[:, :scales.shape[1]] if zp_init is not None else 8
    else:  # INT4 / UINT4: numpy_helper unpacks them
        q = numpy_helper.to_array(data).astype(np.int32)
        zp = numpy_helper.to_array(zp_init).astype(np.int32) if zp_init is not None else 0
    zp = np.broadcast_to(np.asarray(zp, dtype=np.float32), scales.shape)
    cols = q.shape[1]
    return ((q.astype(np.float32) - np.repeat(zp, block, axis=1)[:, :cols]) * np.repeat(scales, block, axis=1)[:, :cols])


def _word_embedding_gather(model, src: Path):
    """The Gather whose data is the largest 2-D float initializer and whose indices are the graph's input_ids."""
    import onnx

    inits = {i.name: i for i in model.graph.initializer}
    has_ids = any(i.name == "input_ids" for i in model.graph.input)
    best = None
    for n in model.graph.node:
        if not has_ids or n.op_type != "Gather" or len(n.input) < 2 or n.input[1] != "input_ids":
            continue
        t = inits.get(n.input[0])
        if t is None or len(t.dims) != 2 or t.data_type != onnx.TensorProto.FLOAT:
            continue
        if any(a.name == "axis" and a.i != 0 for a in n.attribute):
            continue
        if best is None or t.dims[0] * t.dims[1] > best[1].dims[0] * best[1].dims[1]:
            best = (n, t)
    if best is None:
        gathers = sum(n.op_type == "Gather" for n in model.graph.node)
        raise ExportError(f"{src} has no word-embedding lookup to quantize to 4 bits: none of its {gathers} Gather "
                          "nodes reads a 2-D fp32 initializer at the graph input 'input_ids'. 4-bit embeddings "
                          "need the unfused fp32 graph that optimum's main_export writes (model.onnx), before "
                          "fusion or int8 quantization; export the model again and pass that file, or leave the "
                          "embeddings in int8.")
    return best


def _name_nodes(model) -> None:
    """The quantizer includes and excludes nodes by name: give unnamed nodes unique names."""
    used = {n.name for n in model.graph.node if n.name}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in used:
                name += "_"
            n.name = name
            used.add(name)


def _to_opset(model, src: Path):
    from onnx import version_converter

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < INT4_OPSET:
        log.debug("converting %s from opset %d to %d (INT4 tensors)", src.name, opset, INT4_OPSET)
        try:
            model = version_converter.convert_version(model, INT4_OPSET)
        except Exception as e:  # noqa: BLE001 - the converter raises RuntimeError, ValidationError, ...
            raise ExportError(f"{src} (opset {opset}) could not be converted to opset {INT4_OPSET}, which INT4 "
                              f"tensors need: {type(e).__name__}: {e}. Use the default uint8-packed storage "
                              f"(int4_types=False), which keeps opset {opset}.") from e
    model.ir_version = max(model.ir_version, 10)
    return model


def _to_uint8(model, node, symmetric: bool) -> None:
    """Re-store the node's INT4/UINT4 data and zero points as uint8, two values a byte, per row."""
    import numpy as np
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}

    def replace(name: str, values) -> None:
        old = inits[name]
        new = numpy_helper.from_array(_pack(values), name)
        model.graph.initializer.remove(old)
        model.graph.initializer.append(new)

    q = numpy_helper.to_array(inits[node.input[0]]).astype(np.int16)
    if symmetric:  # int4 q in [-8, 7] -> unsigned q + 8 with GatherBlockQuantized's default zero point 8
        q = q + 8
    replace(node.input[0], q)
    if len(node.input) > 3 and node.input[3]:
        replace(node.input[3], numpy_helper.to_array(inits[node.input[3]]).astype(np.int16))
    node.attribute.append(helper.make_attribute("bits", 4))


def _pack(values):
    """2-D values in [0, 15] -> uint8, two per byte along each row, low nibble first (odd rows padded)."""
    import numpy as np

    v = np.asarray(values, dtype=np.uint8)
    if v.shape[1] % 2:
        v = np.pad(v, ((0, 0), (0, 1)))
    return (v[:, 0::2] | (v[:, 1::2] << 4)).astype(np.uint8)


def _unpack(packed):
    import numpy as np

    p = np.asarray(packed, dtype=np.uint8)
    out = np.empty((p.shape[0], p.shape[1] * 2), dtype=np.int32)
    out[:, 0::2] = p & 0x0F
    out[:, 1::2] = p >> 4
    return out


@contextlib.contextmanager
def _quiet_tool():
    """The tool logs each node it skips at INFO, and warns of the opset renumbering handled here."""
    tool = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = tool.level
    tool.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tool.setLevel(level)


def _nbytes(t) -> int:
    import numpy as np
    import onnx

    if t.raw_data:
        return len(t.raw_data)
    count = int(np.prod(t.dims)) if t.dims else 1
    if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (count + 1) // 2
    return count * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
