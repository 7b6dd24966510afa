"""edge-distill: teacher -> distilled student -> int8 ONNX -> latency and accuracy report."""

__version__ = "0.1.0"
