"""`lowbit bench`: the recipe sweep (train, export, verify, measure) and its report and plots."""

from lowbit.bench.bops import bops, conv_macs, layer_bops, model_bops
from lowbit.bench.sweep import BenchOptions, configurations, run_bench

__all__ = [
    "BenchOptions",
    "bops",
    "configurations",
    "conv_macs",
    "layer_bops",
    "model_bops",
    "run_bench",
]
