"""Numpy integer reference runtime for model.int.onnx (docs/int_graph.md): numpy + onnx only."""

from lowbit.runtime.ops import OPS
from lowbit.runtime.runtime import Runtime, run_model

__all__ = ["OPS", "Runtime", "run_model"]
