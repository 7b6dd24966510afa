"""This host's matrix-multiply peak through ONNX Runtime, and how close a measured latency comes to it.

`measure_peak(threads)` times two single-node graphs of the shape [1024 x 1024] x [1024 x 4096]:
MatMulInteger (uint8 activations fed at run time with their zero point, int8 constant weights with a
per-column zero point, int32 output: what dynamic quantization writes) and an fp32 MatMul (constant
weights). The weights are initializers, so ONNX Runtime pre-packs them as it does for a model's.
Each session runs with intra_op_num_threads=threads, inter_op_num_threads=1, sequential execution,
full graph optimization; after warm-up runs it is timed for about `seconds` per graph and the
**best** (shortest) run gives the rate: interference from other processes only ever slows a run
down, so the fastest run is the closest estimate of what the hardware can do (the median, also
returned, says how much the host's load moved the figures). 1 MAC = 2 ops.

`fraction_of_peak(macs, latency_ms, peak)` puts a measured latency next to that peak: ideal_ms is
the time `macs` (from bench.macs.count_macs) would take if every int8 MAC ran at the int8 peak and
every fp32 MAC at the fp32 peak. The model ignores memory traffic (weights and activations that do
not stay in cache), every non-matmul op (layer norm, softmax, GELU, quantize/dequantize, adds,
reshapes, the embedding lookup), per-call and per-op overhead (session run, thread-pool wake-up) and
the smaller, less efficient matrix shapes of a real model (at batch 1 and a short sequence a GEMM is
far from the 1024 x 4096 best case). A low fraction points at exactly those costs.
"""

from __future__ import annotations

import logging
import statistics
import time

log = logging.getLogger(__name__)

M, K, N = 1024, 1024, 4096


def measure_peak(threads: int, *, seconds: float = 1.0) -> dict:
    """{"threads", "int8_gops", "fp32_gflops", "shape": [M, K, N], "method", ...medians and run counts}."""
    import numpy as np

    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    rng = np.random.default_rng(0)
    ops = 2 * M * K * N
    a_u8 = rng.integers(0, 256, size=(M, K), dtype=np.uint8)
    w_i8 = rng.integers(-128, 128, size=(K, N), dtype=np.int8)
    a_f32 = rng.standard_normal((M, K), dtype=np.float32)
    w_f32 = rng.standard_normal((K, N), dtype=np.float32)

    int8 = _session(_int8_graph(w_i8), threads)
    fp32 = _session(_fp32_graph(w_f32), threads)
    t_int8 = _time(int8, {"A": a_u8, "a_zero_point": np.array(128, dtype=np.uint8)}, seconds)
    t_fp32 = _time(fp32, {"A": a_f32}, seconds)
    result = {
        "threads": threads,
        "int8_gops": ops / min(t_int8) / 1e9,
        "fp32_gflops": ops / min(t_fp32) / 1e9,
        "int8_gops_median": ops / statistics.median(t_int8) / 1e9,
        "fp32_gflops_median": ops / statistics.median(t_fp32) / 1e9,
        "runs": {"int8": len(t_int8), "fp32": len(t_fp32)},
        "shape": [M, K, N],
        "method": (f"onnxruntime CPU, single-node MatMulInteger (uint8 x int8 const, int32 out) and MatMul (fp32), "
                   f"[{M}x{K}] x [{K}x{N}], intra_op={threads} inter_op=1 sequential, warm-up then ~{seconds:g} s "
                   f"per graph, best run (median also given); 1 MAC = 2 ops"),
    }
    log.info("peak at %d thread(s): int8 %.0f GOP/s, fp32 %.0f GFLOP/s (best of %d / %d runs)", threads,
             result["int8_gops"], result["fp32_gflops"], len(t_int8), len(t_fp32))
    return result


def fraction_of_peak(macs: dict, latency_ms: float, peak: dict) -> dict:
    """{"ideal_ms", "fraction": ideal_ms / latency_ms, "achieved_gops": 2 * total MACs / latency}."""
    if latency_ms <= 0:
        raise ValueError(f"latency_ms must be positive, got {latency_ms}")
    int8, fp32 = int(macs.get("int8", 0)), int(macs.get("fp32", 0))
    ideal_ms = 1e3 * (2 * int8 / (peak["int8_gops"] * 1e9) + 2 * fp32 / (peak["fp32_gflops"] * 1e9))
    return {"ideal_ms": ideal_ms, "fraction": ideal_ms / latency_ms,
            "achieved_gops": 2 * int(macs["total"]) / (latency_ms * 1e-3) / 1e9}


def _int8_graph(w):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("MatMulInteger", ["A", "B", "a_zero_point", "b_zero_point"], ["Y"])
    graph = helper.make_graph(
        [node], "peak_int8",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [M, K]),
         helper.make_tensor_value_info("a_zero_point", TensorProto.UINT8, [])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [M, N])],
        initializer=[numpy_helper.from_array(w, "B"),
                     numpy_helper.from_array(np.zeros(N, dtype=np.int8), "b_zero_point")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _fp32_graph(w):
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("MatMul", ["A", "B"], ["Y"])
    graph = helper.make_graph(
        [node], "peak_fp32", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [M, K])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [M, N])],
        initializer=[numpy_helper.from_array(w, "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _session(model, threads: int):
    from export.sessions import session

    model.ir_version = min(model.ir_version, 10)
    return session(model.SerializeToString(), threads=threads, sequential=True, level="all", quiet=True)


def _time(sess, feed: dict, seconds: float) -> list[float]:
    """Run times in seconds: 2 warm-up runs, then runs until `seconds` have passed (at least 3)."""
    for _ in range(2):
        sess.run(None, feed)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < end:
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return times
