"""Tsunagi's benchmark suite (``make bench``): data plane, propagation and control-plane scale.

Every figure is a median over interleaved rounds, reported next to a baseline measured in the
same run; raw results go to ``benchmarks/results/*.json`` and a table to ``docs/benchmarks.md``.
"""
