"""`Runtime`: runs model.int.onnx (docs/int_graph.md) with numpy, exactly.

Loading checks the graph (graph.py), plans each ConvInteger/MatMul's exact GEMM dtype from its
accumulator bound (gemm.py), and lays the nodes out as steps that call the op functions of
`OPS` (ops.py) — or, when no intermediates are kept, fused requantizations (fuse.py), each
with its convolution where one feeds it (conv_requantize.py), the fused input quantizer
(input_quant.py), these two reusing per-thread workspaces, and the classifier head as one
step (head_tail.py). A run checks the input, splits it
into batch chunks and runs the steps on each, on `threads` threads with BLAS held to one
(threads.py).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from lowbit.errors import InputError, LowbitError, ModelFileError
from lowbit.runtime.conv_requantize import ConvRequantize
from lowbit.runtime.fuse import Fusion, requantization_fusions, requantize
from lowbit.runtime.graph import Graph, load_graph
from lowbit.runtime.head_tail import HeadTail, head_fusion
from lowbit.runtime.input_quant import QuantizeInput, input_quantizations
from lowbit.runtime.plan import bind, is_gemm, plan_gemm
from lowbit.runtime.threads import default_threads, independent_samples, single_threaded_blas
from lowbit.runtime.threshold import channel_axis

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
"""Samples per chunk at most. Fused convolutions split a chunk further into parts whose patches
stay in cache (conv_requantize.py); one chunk of 64 still measured 5% slower on conv4-64. With
several threads a batch is split into at least one chunk per thread (threads.py)."""


@dataclass(frozen=True)
class _Step:
    node: onnx.NodeProto  # named in messages: a fusion's ConvInteger, MultiThreshold or Quant
    run: Callable[..., np.ndarray]
    inputs: tuple[str, ...]  # "" for an absent optional input
    output: str
    release: tuple[str, ...] = ()  # tensors no later step reads: dropped unless kept
    reuses_output: bool = False  # its output is a workspace the next call overwrites


class Runtime:
    """A loaded, checked and planned integer graph; `run` maps float32 images to its outputs."""

    def __init__(
        self, model: str | os.PathLike | onnx.ModelProto, *, threads: int | None = None
    ) -> None:
        """Load and plan `model`. `threads`: CPU threads a run uses (its batch chunks run in
        parallel, BLAS at one thread meanwhile); default: BLAS's thread count, which follows
        OMP_NUM_THREADS / OPENBLAS_NUM_THREADS, else the number of cores."""
        if threads is None:
            threads = default_threads()
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InputError(f"threads must be a positive integer, got {threads!r}")
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0  # a forked child re-creates the pool: its threads did not survive
        self._pool_lock = threading.Lock()  # runs from several threads make one pool
        self._graph: Graph = load_graph(model)
        self.input_name: str = self._graph.input_name
        self.output_names: list[str] = list(self._graph.output_names)
        self._plan = [plan_gemm(self._graph, n) for n in self._graph.nodes if is_gemm(n)]
        plans = {entry["output"]: entry for entry in self._plan}
        steps = []
        for node in self._graph.nodes:
            run = bind(self._graph, node, plans.get(node.output[0]))
            steps.append(_Step(node, run, tuple(node.input), node.output[0]))
        kept = {self.input_name, *self.output_names, *self._graph.initializers}
        self._kept = kept
        self._steps = _with_releases(steps, kept)
        # with the head as one step; without, for runs that name a tensor inside the head
        self._fused_bases = _fused(steps, self._graph, plans)
        self._fused_steps = _with_releases(self._fused_bases[0], kept)
        self._reused_outputs = {
            s.output for s in self._fused_steps if s.reuses_output and s.output in kept
        }
        # Chunks run on several threads only when they cannot differ from one whole run:
        # samples provably apart, and every GEMM exact (a float GEMM's rounding may depend on
        # how many rows BLAS is given).
        self._independent = independent_samples(self._graph) and all(
            entry["input_range"] is not None for entry in self._plan
        )
        self._fused_for: dict[frozenset[str], tuple[list[_Step], set[str]] | None] = {}
        self._batch_tensors = {self.input_name}
        for node in self._graph.nodes:
            if any(name in self._batch_tensors for name in node.input):
                self._batch_tensors.add(node.output[0])
        for entry in self._plan:
            logger.debug("%s: GEMM plan %s", self._graph.label, entry)

    def layer_plan(self) -> list[dict[str, Any]]:
        """Per ConvInteger/MatMul node, in execution order: its accumulator bound and GEMM dtype.

        Keys: name, op_type, input, input_range ([low, high] of the input codes, None for a
        float input), input_range_source (e.g. "finn_datatype UINT2 of 'x'", "dtype int8 of
        'x'" — possibly of a tensor upstream whose values pass unchanged — or "float"),
        accumulator_bound (the largest |partial sum| over input_range and the weight codes,
        gemm.accumulator_bound; None: weights not an initializer), accumulator_bits (signed
        bits holding ±bound), gemm_dtype ("float32x2": two samples per float32, convolutions
        with bound < 2^11; "float32" < 2^24; "float64" < 2^53; else "int64"; a float input's
        own dtype), declared_accumulator_bound (from the node's doc_string JSON, or None).
        """
        return [{k: v for k, v in entry.items() if k != "output"} for entry in self._plan]

    def run(
        self,
        x: np.ndarray,
        *,
        keep_intermediates: bool = False,
        outputs: Sequence[str] = (),
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> dict[str, np.ndarray]:
        """Graph outputs by name, and the intermediate tensors named in `outputs`; with
        keep_intermediates, every tensor of the graph.

        Tensors are NCHW with their ONNX dtype (integer codes as numpy integers, the tail
        float64). The input is float32 (float64 only where every value is a float32) with the
        declared shape, any batch size; it is processed in chunks of at most `batch_size`
        samples, at least one per thread, each computing exactly what the whole batch would.
        Naming a tensor in `outputs` keeps the fused steps (keep_intermediates runs every node
        on its own) unless a fusion computes that tensor only inside itself.
        """
        x = self._check_input(x)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        extra = [name for name in dict.fromkeys(outputs) if name not in self.output_names]
        unknown = [name for name in extra if name not in self._graph.dtypes]
        if unknown:
            raise InputError(f"{self._graph.label}: no tensor named {', '.join(unknown)}")
        steps = None if keep_intermediates else self._steps_keeping(frozenset(extra))
        keep = keep_intermediates or steps is None
        threads = self.threads if self._independent else 1
        size = min(batch_size, math.ceil(len(x) / threads))
        chunked = len(x) > size
        parts = [x[start : start + size] for start in range(0, len(x), size)]
        with single_threaded_blas() as blas_single:
            if len(parts) > 1 and threads > 1 and blas_single:
                pool = self._thread_pool()
                futures = [
                    pool.submit(self._run_chunk, part, keep, chunked, steps) for part in parts
                ]
                chunks = [future.result() for future in futures]
            else:
                chunks = [self._run_chunk(part, keep, chunked, steps) for part in parts]
        names = list(chunks[0]) if keep_intermediates else [*self.output_names, *extra]
        results = {}
        for name in names:
            if name in self._batch_tensors and chunked:
                # chunks may be NCHW views of channel-major memory: the result is C-ordered
                results[name] = np.ascontiguousarray(np.concatenate([c[name] for c in chunks]))
            else:  # a copy, so that callers cannot alter initializers
                results[name] = np.array(chunks[0][name], order="C", copy=True)
        return results

    def _thread_pool(self) -> ThreadPoolExecutor:
        """The pool of this process (made on first use, again in a forked child)."""
        with self._pool_lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(self.threads, "lowbit-runtime")
                self._pool_pid = os.getpid()
            return self._pool

    def _steps_keeping(self, extra: frozenset[str]) -> tuple[list[_Step], set[str]] | None:
        """The fused steps and their reused outputs with the tensors `extra` kept too, or None
        when a fusion swallows one of them (then every node runs on its own)."""
        if not extra:
            return self._fused_steps, self._reused_outputs
        if extra not in self._fused_for:
            self._fused_for[extra] = None
            for base in self._fused_bases:
                produced = {step.output for step in base}
                if extra <= produced | {self.input_name}:
                    kept = self._kept | extra
                    steps = _with_releases(base, kept)
                    reused = {s.output for s in steps if s.reuses_output and s.output in kept}
                    self._fused_for[extra] = (steps, reused)
                    break
        return self._fused_for[extra]

    def _run_chunk(
        self,
        x: np.ndarray,
        keep: bool,
        chunked: bool,
        fused: tuple[list[_Step], set[str]] | None = None,
    ) -> dict[str, np.ndarray]:
        tensors = {**self._graph.initializers, self.input_name: x}
        steps, reused = fused or (self._fused_steps, self._reused_outputs)
        for step in self._steps if keep else steps:
            arguments = [tensors[name] if name else None for name in step.inputs]
            try:
                output = step.run(*arguments)
            except LowbitError:
                raise
            except (ValueError, TypeError, IndexError, ArithmeticError) as error:
                raise ModelFileError(f"{self._graph.where(step.node)}: {error}") from error
            name = step.output
            if chunked and name in self._batch_tensors and output.shape[:1] != x.shape[:1]:
                raise ModelFileError(
                    f"{self._graph.where(step.node)}: output '{name}' has shape "
                    f"{list(output.shape)} for a chunk of {len(x)} samples; the graph mixes "
                    "samples, run it with threads=1 and batch_size >= the number of samples"
                )
            tensors[name] = output
            if not keep:
                for released in step.release:
                    del tensors[released]
        if not keep:
            # A workspace step overwrites its output on the next chunk this thread runs, and so
            # does every view of it (Flatten, Reshape): copy both kinds of kept tensor.
            for name, value in tensors.items():
                if name in reused or (
                    name not in self._graph.initializers
                    and name != self.input_name
                    and isinstance(value, np.ndarray)
                    and value.base is not None
                ):
                    tensors[name] = value.copy()
        return tensors

    def _check_input(self, x: np.ndarray) -> np.ndarray:
        """x as the declared input dtype, or an InputError naming the first problem."""
        name, shape = self.input_name, self._graph.input_shape
        expected = self._graph.dtypes[name]
        if not isinstance(x, np.ndarray):
            raise InputError(f"input '{name}' must be a numpy array, got {type(x).__name__}")
        accepted = (expected, np.dtype(np.float64)) if expected == np.float32 else (expected,)
        if x.dtype not in accepted:
            raise InputError(f"input '{name}' must be {expected}, got {x.dtype}")
        declared = ["N", *("?" if d is None else d for d in shape[1:])]
        if x.ndim != len(shape) or any(
            d is not None and x.shape[i] != d for i, d in enumerate(shape) if i > 0
        ):
            raise InputError(f"input '{name}' must have shape {declared}, got {list(x.shape)}")
        if x.shape[0] == 0:
            raise InputError(f"input '{name}' has an empty batch")
        if x.dtype.kind == "f":
            finite = np.isfinite(x)
            if not finite.all():
                index = tuple(int(i) for i in np.argwhere(~finite)[0])
                raise InputError(f"input '{name}' has {float(x[index])} at index {list(index)}")
        if x.dtype != expected:
            converted = x.astype(expected)
            inexact = converted != x
            if inexact.any():
                index = tuple(int(i) for i in np.argwhere(inexact)[0])
                raise InputError(
                    f"input '{name}' is float64 and its value {float(x[index])!r} at index "
                    f"{list(index)} is not a float32; pass float32"
                )
            x = converted
        return x


def run_model(model: str | os.PathLike | onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Load `model` and return its outputs for input `x` (see `Runtime.run`)."""
    return Runtime(model).run(x)


def _fused(
    steps: list[_Step], graph: Graph, plans: dict[str, dict]
) -> tuple[list[_Step], list[_Step]]:
    """The steps with each requantization of fuse.py replaced by one `requantize` step, or
    by one `ConvRequantize` step together with the convolution that alone feeds it, and each
    input quantization by one `QuantizeInput` step (input_quant.py); twice: with the
    classifier head as one `HeadTail` step (head_tail.py), and as it is. Both lists share
    their steps."""
    fusions = {f.nodes[0].output[0]: f for f in requantization_fusions(graph)}
    quantizations = {q.nodes[0].output[0]: q for q in input_quantizations(graph)}
    fused_away = {
        node.output[0]
        for run in [*fusions.values(), *quantizations.values()]
        for node in run.nodes[1:]
    }
    producers = {step.output: step for step in steps}
    code_ranges = {  # [low, high] of each requantization's codes: out_bias + [0, T]
        f.nodes[-1].output[0]: (
            f.keywords["out_bias"],
            f.keywords["out_bias"] + graph.initializers[f.inputs[1]].shape[1],
        )
        for f in fusions.values()
    }
    fused = []
    for step in steps:
        if step.output in quantizations:
            quantization = quantizations[step.output]
            div, quant, cast = quantization.nodes
            run = QuantizeInput(quantization)
            fused.append(_Step(quant, run, (div.input[0],), cast.output[0], reuses_output=True))
        elif step.output in fusions:
            fusion = fusions[step.output]
            threshold_node = next(n for n in fusion.nodes if n.op_type == "MultiThreshold")
            output = fusion.nodes[-1].output[0]
            conv = _conv_requantize(
                graph, producers.get(fusion.inputs[0]), fusion, plans, code_ranges
            )
            if conv is not None:
                # the convolution moves to its only reader; its own inputs come earlier still
                fused = [s for s in fused if s.output != fusion.inputs[0]]
                conv_step = producers[fusion.inputs[0]]  # named in messages: shapes are its
                inputs = (conv_step.inputs[0],)
                fused.append(_Step(conv_step.node, conv, inputs, output, reuses_output=True))
                continue
            run = functools.partial(requantize, **fusion.keywords)
            fused.append(_Step(threshold_node, run, fusion.inputs, output))
        elif step.output not in fused_away:
            fused.append(step)
    tail = head_fusion(graph)
    plan = plans.get(tail.matmul.output[0]) if tail is not None else None
    if tail is None or plan is None or plan["input_range"] is None:
        return fused, fused
    inner = {node.output[0] for node in tail.nodes}
    first = next(i for i, step in enumerate(fused) if step.output in inner)
    if any(step.output not in inner for step in fused[first:]):
        return fused, fused  # the head's nodes are not the last steps
    proven = _proven_range(producers, tail.features, code_ranges, plan["input_range"])
    run = HeadTail(graph, tail, plan, input_proven=proven)
    step = _Step(tail.matmul, run, (tail.features,), tail.output)
    return [*fused[:first], step], fused


VALUE_PRESERVING = ("Flatten", "Reshape")
"""Ops whose output holds exactly their first input's values."""


def _proven_range(
    producers: dict[str, _Step],
    name: str,
    code_ranges: dict[str, tuple[int, int]],
    limits: list[int],
) -> bool:
    """Whether `name` provably lies in `limits`: it is a requantization's codes, or passes
    such codes through value-preserving ops only (`producers`: the unfused step of each
    tensor)."""
    while name not in code_ranges:
        step = producers.get(name)
        if step is None or step.node.op_type not in VALUE_PRESERVING:
            return False
        name = step.inputs[0]
    low, high = code_ranges[name]
    return limits[0] <= low <= high <= limits[1]


def _conv_requantize(
    graph: Graph,
    conv: _Step | None,
    fusion: Fusion,
    plans: dict[str, dict],
    code_ranges: dict[str, tuple[int, int]],
) -> ConvRequantize | None:
    """The fused step of `conv` and its requantization, if the conditions of
    conv_requantize.py hold and nothing else reads the convolution's output."""
    if conv is None or conv.node.op_type != "ConvInteger" or conv.output in graph.output_names:
        return None
    readers = [node for node in graph.nodes if conv.output in node.input]
    weights = graph.initializers[conv.inputs[1]]
    thresholds = graph.initializers[fusion.inputs[1]]
    plan = plans.get(conv.output)
    if (
        readers != [fusion.nodes[0]]
        or channel_axis(fusion.keywords["data_layout"], 4) != 1
        or not ConvRequantize.applies(plan, weights, thresholds)
    ):
        return None
    codes = code_ranges.get(conv.inputs[0])
    proven = (
        codes is not None
        and plan["input_range"][0] <= codes[0] <= codes[1] <= plan["input_range"][1]
    )
    zero_points = [graph.initializers[n] if n else None for n in [*conv.inputs[2:4], "", ""][:2]]
    return ConvRequantize(
        weights,
        *zero_points,
        conv=graph.attributes[conv.output],
        plan=plan,
        thresholds=thresholds,
        requantization=fusion.keywords,
        where=graph.where(conv.node),
        input_proven=proven,
    )


def _with_releases(steps: list[_Step], kept: set[str]) -> list[_Step]:
    """The steps, each releasing the tensors (not in `kept`) that no later step reads."""
    last_use = {name: i for i, step in enumerate(steps) for name in step.inputs if name}
    released = [
        {name for name in step.inputs if name and last_use[name] == i and name not in kept}
        for i, step in enumerate(steps)
    ]
    return [dataclasses.replace(s, release=tuple(r)) for s, r in zip(steps, released)]
