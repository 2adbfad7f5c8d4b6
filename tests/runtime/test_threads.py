"""The runtime's own threads (threads.py): same codes at any thread count, BLAS restored."""

from __future__ import annotations

import os
import signal
import sys
import threading

import numpy as np
import pytest
from onnx import TensorProto, helper
from threadpoolctl import ThreadpoolController

from lowbit.errors import InputError
from lowbit.runtime import Runtime
from lowbit.runtime import threads as runtime_threads

from .graphs import conv4_model, make_model, tensor


def blas_threads() -> list[int]:
    return [info["num_threads"] for info in ThreadpoolController().select(user_api="blas").info()]


def test_thread_counts_give_identical_outputs():
    """Chunks on 1, 2 or 3 threads: every output and named intermediate equals the plain ops'."""
    model = conv4_model(np.random.default_rng(11))
    rng = np.random.default_rng(12)
    runtimes = {n: Runtime(model, threads=n) for n in (1, 2, 3)}
    first_codes = next(s.output for s in runtimes[1]._fused_steps if s.reuses_output)
    for batch in (1, 2, 5, 64, 97):
        x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
        plain = runtimes[1].run(x, keep_intermediates=True)
        for n, runtime in runtimes.items():
            for batch_size in (32, 4):
                out = runtime.run(x, outputs=[first_codes], batch_size=batch_size)
                for name, value in out.items():
                    assert value.dtype == plain[name].dtype, (n, batch, name)
                    assert np.array_equal(value, plain[name]), (n, batch, name)


def test_blas_threads_restored_after_runs():
    """Chunks run on the runtime's threads only while BLAS is held to one thread (runs from
    several threads at once share that setting), and BLAS's own count is back afterwards, also
    after a run that failed."""
    before = blas_threads()
    runtime = Runtime(conv4_model(np.random.default_rng(13)), threads=2)
    seen = []
    original = runtime._run_chunk

    def spy(*args, **kwargs):
        seen.append((threading.current_thread().name, blas_threads()))
        return original(*args, **kwargs)

    runtime._run_chunk = spy
    x = np.random.default_rng(14).standard_normal((8, 3, 32, 32)).astype(np.float32)
    runtime.run(x)
    assert [name.startswith("lowbit-runtime") for name, _ in seen] == [True, True]
    workers = [threading.Thread(target=runtime.run, args=(x,)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(seen) >= 6 + 2
    pool = [counts for name, counts in seen if name.startswith("lowbit-runtime")]
    assert pool and all(counts == [1] * len(counts) for counts in pool)
    assert blas_threads() == before
    with pytest.raises(InputError):
        runtime.run(x[:, :2])
    assert runtime_threads._depth == 0 and blas_threads() == before


def test_default_threads_follow_blas():
    assert Runtime(conv4_model(np.random.default_rng(15))).threads == max(max(blas_threads()), 1)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_bad_thread_count(threads):
    with pytest.raises(InputError, match="threads must be a positive integer"):
        Runtime(conv4_model(np.random.default_rng(16)), threads=threads)


def one_node(node, x_shape, initializers=None, elem_type=TensorProto.INT32):
    return make_model(
        [node],
        tensor("x", elem_type, ["N", *x_shape]),
        [tensor("y", elem_type, None)],
        initializers or {},
    )


@pytest.mark.parametrize(
    "node, x_shape, initializers, independent",
    [
        (helper.make_node("Flatten", ["x"], ["y"], axis=1), [3, 4], None, True),
        (helper.make_node("Flatten", ["x"], ["y"], axis=2), [3, 4], None, False),
        (helper.make_node("Mul", ["x", "c"], ["y"]), [5], {"c": np.ones((1, 5), np.int32)}, True),
        (helper.make_node("Mul", ["x", "c"], ["y"]), [5], {"c": np.ones((3, 5), np.int32)}, False),
        (
            helper.make_node("Mul", ["x", "c"], ["y"]),
            [5],
            {"c": np.ones((2, 3, 5), np.int32)},
            False,
        ),
        (helper.make_node("ReduceMax", ["x"], ["y"], axes=[1]), [5], None, True),
        (helper.make_node("ReduceMax", ["x"], ["y"], axes=[0]), [5], None, False),
        (helper.make_node("ReduceMax", ["x"], ["y"], axes=[-2]), [5], None, False),
        (helper.make_node("ReduceMax", ["x"], ["y"]), [5], None, False),  # all axes
    ],
)
def test_samples_mixed_or_apart(node, x_shape, initializers, independent):
    """A batch is split over threads only when no node can mix samples."""
    runtime = Runtime(one_node(node, x_shape, initializers), threads=2)
    assert runtime._independent is independent
    x = np.arange(4 * int(np.prod(x_shape)), dtype=np.int32).reshape(4, *x_shape)
    if independent:
        assert np.array_equal(
            runtime.run(x)["y"],
            Runtime(one_node(node, x_shape, initializers), threads=1).run(x, batch_size=1)["y"],
        )


def test_float_gemm_is_not_split():
    """A float MatMul's rounding may depend on the rows BLAS gets: such graphs run whole."""
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    model = one_node(node, [4], {"w": np.ones((4, 2))}, TensorProto.DOUBLE)
    assert Runtime(model, threads=2)._independent is False
    assert Runtime(conv4_model(np.random.default_rng(17)), threads=2)._independent is True


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_runs_chunks():
    """A child forked after the pool exists has none of its threads: it makes its own."""
    runtime = Runtime(conv4_model(np.random.default_rng(18)), threads=2)
    x = np.random.default_rng(19).standard_normal((6, 3, 32, 32)).astype(np.float32)
    expected = runtime.run(x)["logits"]  # the parent's pool now exists
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: exit status 0 only if the run finishes with the same logits
        signal.alarm(20)
        ok = np.array_equal(runtime.run(x)["logits"], expected)
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1" and status == 0


def test_without_threadpoolctl(monkeypatch):
    """numpy and onnx suffice: without threadpoolctl a run stays on one thread, BLAS untouched."""
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import fails
    monkeypatch.setattr(runtime_threads, "_libraries", None)
    model = conv4_model(np.random.default_rng(20))
    x = np.random.default_rng(21).standard_normal((9, 3, 32, 32)).astype(np.float32)
    assert Runtime(model).threads == 1
    runtime = Runtime(model, threads=2)
    out = runtime.run(x)["logits"]
    assert runtime._pool is None  # the chunks ran serially
    assert np.array_equal(out, Runtime(model, threads=1).run(x, batch_size=1)["logits"])
