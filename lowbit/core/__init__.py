"""Torch-free numerics shared by training, export, the runtime side and the benchmarks."""
