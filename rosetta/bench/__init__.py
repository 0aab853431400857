"""Rosetta Transformer benchmarks: ``python -m rosetta.bench {attention,training,cpu}`` (also ``rosetta bench``).

Benchmarks are scripts, never timed tests (SPEC, "Speed"). Every run prints a table and writes
``<suite>.json`` (device, versions, date, every figure) and a PNG plot to ``--out``
(default docs/benchmarks/). The FLOP formulas are in common.py.
"""

from .common import SCHEMA_VERSION, attention_flops, transformer_step_flops  # noqa: F401
