"""The cut trunk: the classifier's own codes at its size, the same integers on larger images."""

from __future__ import annotations

import numpy as np
import pytest
from runtime.graphs import conv4_model  # tests/ is on sys.path under pytest

from lowbit.detect.trunk import cut_trunk, trunk_code_range
from lowbit.errors import ModelFileError
from lowbit.runtime import Runtime

NAMES = ["codes0", "act1", "codes1", "act2", "codes2"]


@pytest.fixture(scope="module")
def model():
    return conv4_model(np.random.default_rng(0), channels=(3, 8, 8, 8, 8), size=32)


def images(size: int, n: int = 3, seed: int = 1) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(n, 3, size, size))
    return ((pixels - 128) / 64).astype(np.float32)  # the input normalization, exact


def test_at_the_classifier_size_the_codes_are_the_classifier_s(model):
    x = images(32)
    full = Runtime(model).run(x, keep_intermediates=True)
    cut = Runtime(cut_trunk(model, NAMES, 32, 32))
    assert cut.output_names == NAMES
    for name, codes in cut.run(x).items():
        assert np.array_equal(codes, full[name]), name


def test_on_a_larger_image_each_position_sees_its_own_neighbourhood(model):
    x = images(64)
    large = Runtime(cut_trunk(model, NAMES, 64, 64)).run(x)
    reference = Runtime(cut_trunk(model, NAMES, 64, 64)).run(x, keep_intermediates=True)
    assert large["codes2"].shape == (3, 8, 16, 16)
    for name in NAMES:  # fused requantization returns the unfused ops' codes
        assert np.array_equal(large[name], reference[name]), name
    # the 32 px corner, run alone, differs only where its zero padding replaces real pixels:
    # act1 in its last row/column, codes1 (pooled) in its last pooled row/column
    corner = Runtime(cut_trunk(model, NAMES, 32, 32)).run(np.ascontiguousarray(x[:, :, :32, :32]))
    assert np.array_equal(large["act1"][:, :, :31, :31], corner["act1"][:, :, :31, :31])
    assert np.array_equal(large["codes1"][:, :, :15, :15], corner["codes1"][:, :, :15, :15])


def test_code_ranges_come_from_the_graph(model):
    trunk = cut_trunk(model, NAMES, 64, 64)
    assert trunk_code_range(trunk, "codes0") == (-128, 127)
    assert trunk_code_range(trunk, "act1") == (0, 3)
    assert trunk_code_range(trunk, "codes2") == (0, 3)


def test_unknown_tensor_is_refused(model):
    with pytest.raises(ModelFileError, match="no tensor"):
        cut_trunk(model, ["codes9"], 64, 64)
