"""ONNX export, graph optimization, quantization, parity validation and mobile checks.

May import `distill`; never imported by it (except lazily, by the CLI).
"""
