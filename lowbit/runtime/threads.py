"""The runtime's CPU threads: its own pool over batch chunks, BLAS held to one thread meanwhile.

A run of conv4-64 spends most of its time outside the GEMMs (im2col, threshold counts, pooling:
single-threaded numpy passes), and its GEMMs are small, so BLAS's own threads gain little, and
on a busy machine they stalled each other (batch 1 took 72–92 ms instead of under 1 ms). The
runtime therefore parallelises over batch chunks on a thread pool of its own (numpy releases the
GIL in these passes) and sets the BLAS library to one thread while a run is in progress,
restoring it afterwards. Measured on a 2-core machine (benchmarks/runtime_speed.py,
docs/results.md), conv4-64 w1a2 at batch 64: 17–21 ms with two chunk threads against 28–40 ms
on one thread; with BLAS's own two threads instead, 29 ms against 25 ms on one thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import onnx

from lowbit.runtime.graph import Graph
from lowbit.runtime.threshold import channel_axis

_lock = threading.Lock()
_depth = 0
_saved: list[tuple[object, int]] = []
_libraries: list | None = None
_held = False


def _blas_libraries() -> list | None:
    """threadpoolctl's controllers of the loaded BLAS libraries (found once), or None where
    threadpoolctl is not installed: the runtime needs only numpy and onnx, and then runs every
    batch on one thread and leaves BLAS as it is."""
    global _libraries
    if _libraries is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return None
        controller = ThreadpoolController().select(user_api="blas")
        _libraries = list(controller.lib_controllers)
    return _libraries


def default_threads() -> int:
    """Threads a run uses by default: the BLAS library's thread count (which follows
    OMP_NUM_THREADS / OPENBLAS_NUM_THREADS, else the number of cores), at least 1; 1 without
    threadpoolctl."""
    libraries = _blas_libraries()
    if libraries is None:
        return 1
    counts = [library.get_num_threads() or 1 for library in libraries]
    return max(1, max(counts, default=1))


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[bool]:
    """BLAS at one thread while the block runs; nested or concurrent runs share one setting,
    restored when the last of them ends. Yields whether BLAS is known to be at one thread
    (False without threadpoolctl): OpenBLAS ignores the request from some threads (seen from a
    non-main thread once torch has set its OpenMP threads), and then a run does not add
    threads of its own."""
    global _depth, _held
    with _lock:
        if _depth == 0:
            _saved.clear()
            libraries = _blas_libraries()
            for library in libraries or ():
                count = library.get_num_threads()
                if count != 1:  # at one already: nothing to set or restore
                    _saved.append((library, count))
                    library.set_num_threads(1)
            held_to_one = (library.get_num_threads() == 1 for library, _ in _saved)
            _held = libraries is not None and all(held_to_one)
        _depth += 1
        held = _held
    try:
        yield held
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for library, count in _saved:
                    library.set_num_threads(count)
                _saved.clear()


ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Quant", "Cast", "Sqrt"})
"""Ops computing each output element from the same position of their (broadcast) inputs."""


def independent_samples(graph: Graph) -> bool:
    """Whether every sample's outputs depend on that sample alone, proven from the graph's
    structure: then a batch may be split into chunks that run on different threads. Each node
    reading the input (or a tensor computed from it) must keep the batch on axis 0 and never
    reduce, broadcast or reshape across it; anything not recognised counts as mixing."""
    ranks = {graph.input_name: len(graph.input_shape)}  # batch tensors and their ranks
    for node in graph.nodes:
        batch_inputs = [name for name in node.input if name in ranks]
        if not batch_inputs:
            continue
        rank = _rank_keeping_batch(graph, node, batch_inputs, ranks)
        if rank is None:
            return False
        ranks[node.output[0]] = rank
    return True


def _rank_keeping_batch(
    graph: Graph, node: onnx.NodeProto, batch_inputs: list[str], ranks: dict[str, int]
) -> int | None:
    """The output's rank when `node` keeps samples apart on axis 0, else None."""
    op, attributes = node.op_type, graph.attributes[node.output[0]]
    rank = max(ranks[name] for name in batch_inputs)
    if op in ELEMENTWISE:
        constants = [graph.initializers[n] for n in node.input if n and n not in ranks]
        if any(ranks[name] != rank for name in batch_inputs):
            return None  # a lower-rank batch tensor would broadcast across samples
        if any(c.ndim > rank or (c.ndim == rank and c.shape[0] != 1) for c in constants):
            return None
        return rank
    if op in ("ConvInteger", "MaxPool"):
        return rank if node.input[0] in ranks and len(batch_inputs) == 1 else None
    if op == "MultiThreshold":
        thresholds_ok = node.input[0] in ranks and len(batch_inputs) == 1
        return (
            rank
            if thresholds_ok and channel_axis(attributes.get("data_layout", ""), rank)
            else None
        )
    if op == "MatMul":  # the batch tensor on the left, a constant matrix on the right
        return (
            rank
            if batch_inputs == [node.input[0]] and graph.initializers[node.input[1]].ndim == 2
            else None
        )
    if op == "Flatten":  # [prod(shape[:axis]), ...]: the batch stays alone only for axis 1
        axis = attributes.get("axis", 1)
        return 2 if (axis % rank if axis < 0 else axis) == 1 else None
    if op == "Reshape":
        target = [int(d) for d in graph.initializers[node.input[1]]]
        keeps = bool(target) and target[0] == 0 and not attributes.get("allowzero", 0)
        return len(target) if keeps and node.input[0] in ranks and len(batch_inputs) == 1 else None
    if op in ("ReduceMax", "ReduceSum"):
        axes = attributes.get("axes")
        if op == "ReduceSum" and len(node.input) > 1 and node.input[1]:
            axes = graph.initializers[node.input[1]].tolist()
        if axes is None or not len(axes) or any(int(a) % rank == 0 for a in axes):
            return None
        return rank if attributes.get("keepdims", 1) else rank - len(axes)
    return None
