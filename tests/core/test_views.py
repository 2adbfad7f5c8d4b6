"""Dihedral views and feature codes summed over them (lowbit/core/views.py), by hand."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.core.scores import check_detector, default_views, detector_name, ood_views
from lowbit.core.views import check_views, dihedral_view, stack_views, sum_views, view_outputs

IMAGE = np.array([[1, 2], [3, 4]])
# view v of [[1, 2], [3, 4]]: bit 0 flips left-right, bit 1 up-down, bit 2 transposes after
EXPECTED = {
    0: [[1, 2], [3, 4]],
    1: [[2, 1], [4, 3]],
    2: [[3, 4], [1, 2]],
    3: [[4, 3], [2, 1]],
    4: [[1, 3], [2, 4]],
    5: [[2, 4], [1, 3]],
    6: [[3, 1], [4, 2]],
    7: [[4, 2], [3, 1]],
}


@pytest.mark.parametrize("view", range(8))
def test_each_view_by_hand(view) -> None:
    x = np.stack([IMAGE, 10 * IMAGE])[None]  # [1, 2 channels, 2, 2]: channels move alike
    got = dihedral_view(x, view)
    assert got.flags.c_contiguous
    assert np.array_equal(got[0, 0], EXPECTED[view])
    assert np.array_equal(got[0, 1], 10 * np.array(EXPECTED[view]))


def test_the_eight_views_are_the_squares_symmetries() -> None:
    x = np.arange(9).reshape(1, 1, 3, 3)
    views = {dihedral_view(x, v).tobytes() for v in range(8)}
    assert len(views) == 8  # an asymmetric image has 8 distinct views, no more
    for v in range(8):  # a closed group: any view of a view is a view
        assert {dihedral_view(dihedral_view(x, v), w).tobytes() for w in range(8)} == views


def test_transposing_views_need_square_images() -> None:
    x = np.zeros((1, 3, 4, 6))
    assert dihedral_view(x, 3).shape == x.shape
    with pytest.raises(ValueError, match="square"):
        dihedral_view(x, 4)
    with pytest.raises(ValueError, match="0..7"):
        dihedral_view(x, 8)


def test_summed_codes_are_exact_int64() -> None:
    codes = np.array([[255, 3], [255, 0], [255, 1], [255, 2]], dtype=np.uint8)  # 2 views x 2
    summed = sum_views(codes, 2)
    assert summed.dtype == np.int64
    assert summed.tolist() == [[510, 4], [510, 2]]  # above uint8's range: no wrap-around
    assert sum_views(codes, 1).tolist() == codes.astype(np.int64).tolist()
    with pytest.raises(ValueError, match="views"):
        sum_views(codes[:3], 2)


def test_view_outputs_runs_each_view_through_the_executor() -> None:
    x = np.random.default_rng(0).normal(size=(5, 3, 4, 4)).astype(np.float32)
    calls = []

    def executor(images):  # features: the first row of each image's first channel, as codes
        calls.append(images.copy())
        return images[:, :, 0, 0], np.round(10 * images[:, 0, 0, :]).astype(np.int32)

    logits, summed = view_outputs(executor, x, 4)
    assert [c.shape[0] for c in calls] == [5] * 4
    for view, images in enumerate(calls):
        assert np.array_equal(images, dihedral_view(x, view))
    assert np.array_equal(logits, x[:, :, 0, 0])  # the image itself decides the class
    stacked = executor(stack_views(x, 4))[1]
    assert np.array_equal(summed, sum_views(stacked, 4))
    assert np.array_equal(view_outputs(executor, x, 1)[1], executor(x)[1])


def test_view_counts_and_detectors() -> None:
    assert [check_views(v) for v in (1, 2, 4, 8)] == [1, 2, 4, 8]
    for bad in (0, 3, 16, True, "8", 8.0):
        with pytest.raises(ValueError, match="view"):
            check_views(bad)
    assert detector_name("rel_mahalanobis", 8) == "rel_mahalanobis@8views"
    assert detector_name("msp") == "msp"
    assert (
        default_views("rel_mahalanobis") == 8 and default_views("msp") == default_views("vim") == 1
    )
    check_detector("residual", 4)
    for name, views in (("msp", 2), ("vim", 8), ("nope", 1)):
        with pytest.raises(ValueError):
            check_detector(name, views)
    assert ood_views(None) == ood_views({}) == ood_views({"views": None}) == 1
    assert ood_views({"views": 8}) == 8
    with pytest.raises(ValueError, match="model.json: ood.views"):
        ood_views({"views": 5})
