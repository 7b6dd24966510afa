"""Latency and accuracy benchmarks per artifact and target, and the reports.

May import `export` and `distill`.
"""
