"""bench.macs and bench.peak on real graphs: hand-built ones, and a tiny BERT exported, fused and quantized
by the project's own passes (no mocks). No timed asserts: the machine may be loaded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.macs import count_macs
from bench.peak import fraction_of_peak, measure_peak

SEQ = 16


def _bert_macs(cfg: dict, seq: int, batch: int = 1) -> int:
    """Closed form for BertForSequenceClassification as the graph computes it, per sequence:
    each layer Q, K, V, O projections 4 S H^2, Q.K^T and attention.V 2 S^2 H, feed-forward 2 S H F;
    the pooler's dense on the [CLS] token only (HF slices before the matmul) H^2; the classifier H x labels.
    Biases, layer norms, softmax, GELU and the embedding lookups are not MACs."""
    h, f, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    labels = cfg["num_labels"]
    per_layer = 4 * seq * h * h + 2 * seq * seq * h + 2 * seq * h * f
    return batch * (layers * per_layer + h * h + h * labels)


# ------------------------------------------------------------------------------------ hand-built


def test_hand_built_graph_matches_formula(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    hid, ffn, gm, gk, gn = 8, 12, 3, 5, 4
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((hid, ffn)).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.standard_normal((gn, gk)).astype(np.float32), "W2"),
        numpy_helper.from_array(rng.integers(-128, 128, (hid, ffn)).astype(np.int8), "W3"),
        # a QDQ MatMul (static quantization's format): ORT runs it as an integer kernel
        numpy_helper.from_array(rng.integers(-128, 128, (hid, ffn)).astype(np.int8), "W4q"),
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "zi8"),
        numpy_helper.from_array(np.array(128, np.uint8), "zu8"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["y1"]),
        helper.make_node("Gemm", ["g", "W2"], ["y2"], transB=1),
        helper.make_node("MatMulInteger", ["q", "W3"], ["y3"]),
        helper.make_node("QuantizeLinear", ["x", "s", "zu8"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "zu8"], ["xdq"]),
        helper.make_node("DequantizeLinear", ["W4q", "s", "zi8"], ["W4"]),
        helper.make_node("MatMul", ["xdq", "W4"], ["y4"]),
    ]
    graph = helper.make_graph(
        nodes, "hand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", hid]),
         helper.make_tensor_value_info("g", TensorProto.FLOAT, [gm, gk]),
         helper.make_tensor_value_info("q", TensorProto.UINT8, ["batch", "seq", hid])],
        [helper.make_tensor_value_info(n, TensorProto.UNDEFINED, None) for n in ("y1", "y2", "y3", "y4")],
        initializer=inits)
    path = tmp_path / "hand.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)

    b, s = 2, 7
    r = count_macs(path, batch=b, seq=s)
    matmul = b * s * hid * ffn
    assert r["by_op"] == {"MatMul": 2 * matmul, "Gemm": gm * gn * gk, "MatMulInteger": matmul}
    assert r["total"] == 3 * matmul + gm * gn * gk
    assert r["int8"] == 2 * matmul  # MatMulInteger and the QDQ MatMul
    assert r["fp32"] == matmul + gm * gn * gk
    assert (r["batch"], r["seq"], r["unknown_ops"]) == (b, s, [])


# ------------------------------------------------------------------------------------ tiny BERT


@pytest.fixture(scope="module")
def bert_graphs(tiny_bert, tmp_path_factory):
    from export.onnx_export import run as export_run
    from export.optimize import run as fuse
    from export.quantize import dynamic

    out = tmp_path_factory.mktemp("macs-onnx")
    from transformers import AutoConfig

    cfg = json.loads((tiny_bert / "config.json").read_text())
    cfg["num_labels"] = AutoConfig.from_pretrained(tiny_bert).num_labels  # config.json omits the default 2
    unfused = export_run(tiny_bert, out)
    fusions = fuse(unfused, out / "fused.onnx", cfg)
    assert fusions.get("Attention"), fusions
    dynamic(unfused, out / "int8.onnx", isa="avx512_vnni", per_channel=True)  # the pipeline's int8 path
    dynamic(out / "fused.onnx", out / "fused_int8.onnx", isa="avx512_vnni", per_channel=True)  # QAttention
    return cfg, {"unfused": unfused, "fused": out / "fused.onnx", "int8": out / "int8.onnx",
                 "fused_int8": out / "fused_int8.onnx"}


@pytest.mark.parametrize("kind", ["unfused", "fused", "int8", "fused_int8"])
def test_tiny_bert_macs_match_closed_form(bert_graphs, kind):
    cfg, paths = bert_graphs
    r = count_macs(paths[kind], batch=1, seq=SEQ)
    assert r["unknown_ops"] == []
    assert r["total"] == _bert_macs(cfg, SEQ), r
    assert r["int8"] + r["fp32"] == r["total"]
    assert sum(r["by_op"].values()) == r["total"]
    h = cfg["hidden_size"]
    attention_products = cfg["num_hidden_layers"] * 2 * SEQ * SEQ * h
    if kind == "unfused":
        assert set(r["by_op"]) == {"MatMul", "Gemm"} and r["int8"] == 0
    elif kind == "fused":
        # Attention = QKV projection + Q.K^T + attention.V
        assert r["by_op"]["Attention"] == cfg["num_hidden_layers"] * 3 * SEQ * h * h + attention_products
        assert r["int8"] == 0
    else:
        # most MACs are int8; the activation x activation products (Q.K^T, attention.V) stay fp32
        assert r["int8"] > r["total"] / 2
        assert r["fp32"] == attention_products
        assert ("QAttention" in r["by_op"]) == (kind == "fused_int8")


def test_counting_writes_nothing_into_the_working_directory(bert_graphs, tmp_path, monkeypatch):
    # ORT's SymbolicShapeInference.infer_shapes saves sym_shape_infer_temp.onnx + a .data file into the
    # working directory when it cannot finish (QAttention, QEmbedLayerNormalization)
    _, paths = bert_graphs
    monkeypatch.chdir(tmp_path)
    r = count_macs(paths["fused_int8"], batch=1, seq=SEQ)
    assert r["unknown_ops"] == [] and r["shapes_from"] == "onnxruntime run"
    assert list(tmp_path.iterdir()) == []


def test_tiny_bert_scaling_with_seq_and_batch(bert_graphs):
    cfg, paths = bert_graphs
    for kind in ("unfused", "fused", "fused_int8"):
        one = count_macs(paths[kind], batch=1, seq=SEQ)
        two = count_macs(paths[kind], batch=1, seq=2 * SEQ)
        assert two["total"] == _bert_macs(cfg, 2 * SEQ)
        # linear parts double, Q.K^T and attention.V quadruple, pooler and classifier stay
        h, layers, labels = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_labels"]
        assert two["total"] - 2 * one["total"] == layers * 4 * SEQ * SEQ * h - (h * h + h * labels)
    batched = count_macs(paths["int8"], batch=3, seq=SEQ)
    assert batched["total"] == 3 * _bert_macs(cfg, SEQ) and batched["batch"] == 3


def _end_to_end(tiny_bert, classifier_path, dst):
    """A string-input graph: onnxruntime-extensions' BertTokenizer, Unsqueeze to [1, seq], the classifier."""
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime_extensions import gen_processing_models
    from transformers import AutoTokenizer

    pre, _ = gen_processing_models(AutoTokenizer.from_pretrained(tiny_bert), pre_kwargs={})
    cls = onnx.load(str(classifier_path))
    tok_nodes = list(pre.graph.node)
    for n in tok_nodes:
        n.output[:] = [f"tok_{o}" for o in n.output]
    glue = [helper.make_node("Unsqueeze", [f"tok_{i.name}", "axes0"], [i.name]) for i in cls.graph.input]
    graph = helper.make_graph(
        tok_nodes + glue + list(cls.graph.node), "e2e", list(pre.graph.input), list(cls.graph.output),
        initializer=list(cls.graph.initializer) + [numpy_helper.from_array(np.array([0], np.int64), "axes0")])
    opsets = [o for o in cls.opset_import if o.domain != "ai.onnx.contrib"]
    opsets.append(helper.make_opsetid("ai.onnx.contrib", 1))
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=cls.ir_version), dst)
    return dst


def test_end_to_end_graph_counts_the_classifier(tiny_bert, bert_graphs, tmp_path):
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    cfg, paths = bert_graphs
    e2e = _end_to_end(tiny_bert, paths["int8"], tmp_path / "e2e.onnx")
    so = ort.SessionOptions()
    so.register_custom_ops_library(get_library_path())
    logits = ort.InferenceSession(str(e2e), so, providers=["CPUExecutionProvider"]).run(
        None, {"text": np.array(["a gripping and beautifully acted film"])})[0]
    assert logits.shape == (1, cfg["num_labels"])  # the test graph is a real, runnable end-to-end graph

    auto = count_macs(e2e, batch=1, seq=SEQ)
    plain = count_macs(paths["int8"], batch=1, seq=SEQ)
    assert auto["total"] == plain["total"] == _bert_macs(cfg, SEQ)
    assert auto["int8"] == plain["int8"] and auto["unknown_ops"] == []
    named = count_macs(e2e, batch=1, seq=SEQ, inputs=["input_ids", "attention_mask", "token_type_ids"])
    assert named["total"] == auto["total"]


# ------------------------------------------------------------------------------------ peak


def test_fraction_of_peak_arithmetic():
    macs = {"total": 3_000_000_000, "int8": 2_000_000_000, "fp32": 1_000_000_000}
    peak = {"int8_gops": 400.0, "fp32_gflops": 100.0}
    r = fraction_of_peak(macs, 50.0, peak)
    # 2 * 2e9 ops at 400 GOP/s = 10 ms, 2 * 1e9 at 100 GFLOP/s = 20 ms
    assert r["ideal_ms"] == pytest.approx(30.0)
    assert r["fraction"] == pytest.approx(0.6)
    assert r["achieved_gops"] == pytest.approx(120.0)  # 6e9 ops in 50 ms
    with pytest.raises(ValueError):
        fraction_of_peak(macs, 0.0, peak)


def test_measure_peak_sanity():
    r = measure_peak(1, seconds=0.01)
    assert r["threads"] == 1 and r["shape"] == [1024, 1024, 4096]
    assert r["int8_gops"] > 0 and r["fp32_gflops"] > 0  # no ordering: under load int8 need not win
    assert r["int8_gops"] >= r["int8_gops_median"] and r["fp32_gflops"] >= r["fp32_gflops_median"]
    assert min(r["runs"].values()) >= 3 and "best" in r["method"]
