"""`Runtime.run(x, outputs=[...])` returns named intermediate tensors from the fused steps,
exactly equal to what running every node on its own gives."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.errors import InputError
from lowbit.runtime import Runtime

from .graphs import conv4_model

FEATURES = "f"  # the feature codes (int64) of graphs.conv4_model


@pytest.fixture(scope="module")
def runtime():
    rng = np.random.default_rng(0)
    return Runtime(conv4_model(rng, channels=(3, 16, 16, 16, 16), size=32))


@pytest.mark.parametrize("batch, chunk", [(1, 64), (5, 64), (64, 64), (70, 32)])
def test_named_outputs_equal_the_unfused_run(runtime, batch, chunk):
    x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    every = runtime.run(x, keep_intermediates=True, batch_size=chunk)
    named = runtime.run(x, outputs=[FEATURES], batch_size=chunk)
    assert set(named) == {*runtime.output_names, FEATURES}
    for name, value in named.items():
        assert value.dtype == every[name].dtype and np.array_equal(value, every[name]), name


def test_named_outputs_keep_the_fused_steps(runtime, monkeypatch):
    ran_unfused = []
    original = runtime._run_chunk

    def spy(x, keep, chunked, fused=None):
        ran_unfused.append(keep)
        return original(x, keep, chunked, fused)

    monkeypatch.setattr(runtime, "_run_chunk", spy)
    runtime.run(np.zeros((2, 3, 32, 32), np.float32), outputs=[FEATURES])
    assert ran_unfused and not any(ran_unfused)


def test_a_tensor_inside_a_fusion_falls_back_to_every_node(runtime):
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    every = runtime.run(x, keep_intermediates=True)
    inside = "acc2"  # the accumulator of a fused ConvInteger -> MultiThreshold step
    named = runtime.run(x, outputs=[inside, FEATURES])
    assert runtime._steps_keeping(frozenset([inside])) is None
    for name in (inside, FEATURES, "logits"):
        assert np.array_equal(named[name], every[name]), name


def test_unknown_output_is_a_one_line_error(runtime):
    with pytest.raises(InputError, match="no tensor named nope"):
        runtime.run(np.zeros((1, 3, 32, 32), np.float32), outputs=["nope"])


def test_returned_tensors_are_not_overwritten_by_the_next_run(runtime):
    rng = np.random.default_rng(2)
    first_x, second_x = (rng.standard_normal((2, 3, 32, 32)).astype(np.float32) for _ in "ab")
    first = runtime.run(first_x, outputs=[FEATURES])
    kept = {name: value.copy() for name, value in first.items()}
    runtime.run(second_x, outputs=[FEATURES])
    for name, value in first.items():
        assert np.array_equal(value, kept[name]), name


@pytest.mark.parametrize("threads", [1, 2])
def test_a_view_of_a_workspace_survives_the_next_chunk(threads):
    """With a 1x1 last feature map, "flat" (Flatten of the last fused step's pooled codes) is a
    view of that step's workspace, which the thread's next chunk overwrites: each chunk's
    tensor must be its own, at any chunk size."""
    model = conv4_model(np.random.default_rng(0), channels=(3, 8, 8, 8, 8), size=16)
    runtime = Runtime(model, threads=threads)
    x = np.random.default_rng(3).standard_normal((70, 3, 16, 16)).astype(np.float32)
    every = runtime.run(x, keep_intermediates=True)
    for chunk in (7, 16, 32):
        named = runtime.run(x, outputs=["flat"], batch_size=chunk)
        assert np.array_equal(named["flat"], every["flat"]), chunk
