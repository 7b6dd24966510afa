"""4-bit word embeddings (export/embed4.py) on a real tiny BERT exported by optimum: graph surgery, numerics,
the 4-bit -> dynamic int8 pipeline, the .ort conversion, and the refusal of graphs without a word-embedding Gather.

Measured on the tiny BERT (188 x 32 table, logits ~0.1 in size, onnxruntime 1.32): max |logit - fp32 logit| is
5.4e-4 at block 16 and 1.3e-3 at block 32 (4-bit embeddings only), 4.1e-3 after dynamic int8 as well
(int8 alone: 3.9e-3). Asymmetric blocks reconstruct within 0.5 step; symmetric ones within 0.99 step (the
tool's scale is extreme / -8, so the opposite extreme can clip from +8 to +7).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tiny import CORPUS

BLOCK = 16
WORD = "bert.embeddings.word_embeddings.weight"


@pytest.fixture(scope="module")
def fp32(tiny_bert, tmp_path_factory) -> Path:
    from export.onnx_export import run

    return run(tiny_bert, tmp_path_factory.mktemp("embed4-fp32"))


@pytest.fixture(scope="module")
def batch(tiny_bert) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    return dict(tok(CORPUS, truncation=True, max_length=64, padding=True, return_tensors="np"))


@pytest.fixture(scope="module")
def four(fp32, tmp_path_factory) -> tuple[Path, dict]:
    from export.embed4 import word_embeddings_4bit

    dst = tmp_path_factory.mktemp("embed4") / "model.e4.onnx"
    return dst, word_embeddings_4bit(fp32, dst, block_size=BLOCK)


def _run(path: Path, batch: dict) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(["logits"], {k: v for k, v in batch.items() if k in names})[0]


def _inits(model) -> dict:
    return {i.name: i for i in model.graph.initializer}


def _table(path: Path) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    return numpy_helper.to_array(_inits(onnx.load(str(path)))[WORD])


def _reconstruct(model, node) -> tuple[np.ndarray, np.ndarray]:
    """Independent numpy dequantization of a uint8-packed GatherBlockQuantized: (table, per-element step)."""
    from onnx import helper, numpy_helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["gather_axis"] == 0 and attrs["quantize_axis"] == 1 and attrs["bits"] == 4
    block = attrs["block_size"]
    inits = _inits(model)
    packed = numpy_helper.to_array(inits[node.input[0]])
    scales = numpy_helper.to_array(inits[node.input[2]])
    assert packed.dtype == np.uint8 and scales.dtype == np.float32
    q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[0], -1).astype(np.float32)
    if len(node.input) > 3:
        zp_packed = numpy_helper.to_array(inits[node.input[3]])
        zp = np.stack([zp_packed & 0x0F, zp_packed >> 4], axis=-1).reshape(zp_packed.shape[0], -1)
        zp = zp[:, :scales.shape[1]].astype(np.float32)
    else:
        zp = np.full(scales.shape, 8.0, dtype=np.float32)  # GatherBlockQuantized's default for uint8 data
    scale = np.repeat(scales, block, axis=1)
    return (q - np.repeat(zp, block, axis=1)) * scale, np.abs(scale)


def test_replaces_only_the_word_embedding_gather(fp32, four):
    import onnx

    dst, info = four
    src, out = onnx.load(str(fp32)), onnx.load(str(dst))
    word = next(n for n in src.graph.node if n.op_type == "Gather" and n.input[0] == WORD)
    assert info["node"] == word.name
    assert (info["rows"], info["dim"], info["block_size"]) == tuple(_table(fp32).shape) + (BLOCK,)
    assert info["bytes_before"] == info["rows"] * info["dim"] * 4
    assert info["bytes_after"] < info["bytes_before"] / 5  # 4 bits + a scale and zero point per 16 values

    q = [n for n in out.graph.node if n.op_type == "GatherBlockQuantized"]
    assert len(q) == 1 and q[0].domain == "com.microsoft"
    assert q[0].output[0] == word.output[0] and q[0].input[1] == "input_ids"
    assert WORD not in _inits(out)  # the fp32 table is gone, not kept beside the 4-bit one

    # every other Gather (position, token type, shape arithmetic, pooler) is untouched, tables included
    before = {n.name: n for n in src.graph.node if n.op_type == "Gather" and n.name != word.name}
    after = {n.name: n for n in out.graph.node if n.op_type == "Gather"}
    assert before.keys() == after.keys() and len(before) >= 3
    assert all(before[k] == after[k] for k in before)
    src_inits, out_inits = _inits(src), _inits(out)
    for n in before.values():
        if n.input[0] in src_inits:
            assert out_inits[n.input[0]] == src_inits[n.input[0]]
    # no INT4 tensors, so the model keeps its own opset and IR version
    assert out.ir_version == src.ir_version
    assert {o.domain: o.version for o in out.opset_import}[""] == {o.domain: o.version for o in src.opset_import}[""]


def test_logits_stay_close_to_fp32(fp32, four, batch):
    ref, got = _run(fp32, batch), _run(four[0], batch)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 5e-3  # measured 5.4e-4 at block 16


@pytest.mark.parametrize("symmetric,bound", [(False, 0.5), (True, 1.0)])
def test_dequantized_table_within_a_quantization_step(fp32, tmp_path, symmetric, bound):
    import onnx

    from export.embed4 import dequantize, word_embeddings_4bit

    dst = tmp_path / "e4.onnx"
    word_embeddings_4bit(fp32, dst, block_size=BLOCK, symmetric=symmetric)
    model = onnx.load(str(dst))
    node = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    assert (len(node.input) == 3) == symmetric  # symmetric blocks carry no zero points
    table, step = _reconstruct(model, node)
    original = _table(fp32)
    assert table.shape == original.shape
    # asymmetric: half a step per block; symmetric: scale = extreme / -8 lets the opposite extreme clip by a step
    assert (np.abs(table - original) <= bound * step + 1e-6).all()
    np.testing.assert_allclose(dequantize(model, node), table, rtol=0, atol=1e-6)


def test_int4_tensors_give_the_same_numbers(fp32, four, batch, tmp_path):
    import onnx

    from export.embed4 import dequantize, word_embeddings_4bit

    dst = tmp_path / "e4.int4.onnx"
    info = word_embeddings_4bit(fp32, dst, block_size=BLOCK, int4_types=True)
    assert info["storage"] == "int4"
    model = onnx.load(str(dst))
    node = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    assert _inits(model)[node.input[0]].data_type == onnx.TensorProto.UINT4
    assert {o.domain: o.version for o in model.opset_import}[""] == 21
    uint8 = onnx.load(str(four[0]))
    ref_node = next(n for n in uint8.graph.node if n.op_type == "GatherBlockQuantized")
    np.testing.assert_array_equal(dequantize(model, node), dequantize(uint8, ref_node))
    np.testing.assert_allclose(_run(dst, batch), _run(four[0], batch), rtol=0, atol=1e-5)


def test_then_dynamic_int8_is_smaller_and_converts_to_ort(fp32, four, batch, tmp_path):
    import onnx
    import onnxruntime as ort

    from export import quantize
    from export.mobile import to_ort

    int8, both = tmp_path / "model.int8.onnx", tmp_path / "model.e4.int8.onnx"
    quantize.dynamic(fp32, int8, isa="avx512_vnni", per_channel=True)
    quantize.dynamic(four[0], both, isa="avx512_vnni", per_channel=True)
    ops = [n.op_type for n in onnx.load(str(both)).graph.node]
    assert ops.count("GatherBlockQuantized") == 1  # quantize_dynamic left it alone ...
    assert "MatMulInteger" in ops  # ... and quantized the MatMuls
    assert both.stat().st_size < int8.stat().st_size

    ref, got = _run(fp32, batch), _run(both, batch)
    assert np.abs(got - ref).max() < 2e-2  # measured 4.1e-3 (int8 alone: 3.9e-3)

    ort_file = to_ort(both, tmp_path / "model.e4.int8.ort")
    sess = ort.InferenceSession(str(ort_file), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(["logits"], batch)[0], got, rtol=0, atol=1e-6)


def test_graph_without_word_embedding_gather_raises(fp32, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from distill.errors import ExportError
    from export import quantize
    from export.embed4 import word_embeddings_4bit

    # an already int8-quantized graph: its word-embedding Gather reads an int8 table
    int8 = tmp_path / "model.int8.onnx"
    quantize.dynamic(fp32, int8, isa="avx512_vnni", per_channel=True)
    with pytest.raises(ExportError, match="no word-embedding lookup") as e:
        word_embeddings_4bit(int8, tmp_path / "out.onnx")
    assert str(int8) in str(e.value)

    # a graph with no Gather at all
    g = helper.make_graph([helper.make_node("MatMul", ["input_ids", "w"], ["logits"])], "g",
                          [helper.make_tensor_value_info("input_ids", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor("w", TensorProto.FLOAT, [4, 2], [0.0] * 8)])
    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(plain))
    with pytest.raises(ExportError, match="no word-embedding lookup"):
        word_embeddings_4bit(plain, tmp_path / "out2.onnx")
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "out2.onnx").exists()


@pytest.mark.parametrize("block_size", [24, 8, 64])
def test_block_size_must_be_a_power_of_two_dividing_the_hidden_size(fp32, tmp_path, block_size):
    from distill.errors import ExportError
    from export.embed4 import word_embeddings_4bit

    with pytest.raises(ExportError, match="block size"):
        word_embeddings_4bit(fp32, tmp_path / "out.onnx", block_size=block_size)  # hidden is 32
