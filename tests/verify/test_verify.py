"""verify_export end to end: clean exports pass, a planted off-by-one threshold is caught."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from export.helpers import calibrated, run_int_graph  # tests/ is on sys.path under pytest
from onnx import numpy_helper

from lowbit.artifacts import GRAPH_FILES
from lowbit.errors import ModelFileError
from lowbit.export.api import export_model
from lowbit.manifest import read_manifest, seal
from lowbit.verify.api import build_inputs, format_report, load_graph, verify_export
from lowbit.verify.capture import torch_codes
from lowbit.verify.compare import (
    EXPLAINED_ULPS,
    boundary_distance_ulps,
    compare_codes,
    compare_tail,
    tail_tolerance,
)

LAYER = "backbone.blocks.1.act"  # where the bug is planted: a 1-bit-weight, 2-bit-act layer
LABELS = {"runtime": "integer runtime", "qcdq": "onnxruntime (QCDQ)", "qonnx": "qonnx execute_onnx"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, export dir, model.json, inputs) for a calibrated w1a2 conv4."""
    model = calibrated("w1a2", "conv4")
    out = tmp_path_factory.mktemp("verify")
    description = export_model(
        model, out, class_names=["a", "b", "c", "d"], normalization={"mean": [0.5] * 3}
    )
    inputs = build_inputs(description, None, n=0, random=16, ties=True, seed=0)
    return model, out, description, inputs


def test_build_inputs(exported) -> None:
    _, _, description, inputs = exported
    assert set(inputs) == {"random", "ties"}
    assert inputs["random"].shape == (16, 3, 32, 32) and inputs["random"].dtype == np.float32
    assert len(inputs["ties"]) == 64  # at least 64 tie images
    scale = description["input"]["input_scale"]
    fraction = inputs["ties"] / np.float32(scale) - np.floor(inputs["ties"] / np.float32(scale))
    assert np.all(fraction == 0.5)  # every pixel exactly on a tie of the input quantizer


def test_verify_witnesses_pass(exported) -> None:
    model, out, _, inputs = exported
    report = verify_export(model, out, inputs, executors=("qcdq", "qonnx"), progress=False)
    assert report["inputs"] == {"random": 16, "ties": 64}
    assert [row["executor"] for row in report["executors"]] == ["qcdq", "qonnx"]
    assert report["checked_tensors"] == 2 * 5  # per executor: input + 4 blocks
    assert report["checked_values"] > 0
    assert (report["mismatches"], report["unexplained"]) == (0, 0)
    assert report["first_mismatch"] is None
    for row in report["executors"]:
        assert row["checked_tensors"] == 5 and row["mismatches"] == 0
        assert row["tail"]["ok"] and row["tail"]["max_abs_diff"] <= report["tail_tolerance"]
    saved = json.loads((out / "verify.json").read_text())
    assert saved == json.loads(json.dumps(report))
    text = format_report(report)
    for executor in ("qcdq", "qonnx"):
        assert LABELS[executor] in text
    assert "first mismatch" not in text


def test_verify_with_runtime_passes(exported) -> None:
    model, out, _, inputs = exported
    report = verify_export(model, out, inputs, progress=False, write=False)
    assert [row["executor"] for row in report["executors"]] == ["runtime", "qcdq", "qonnx"]
    assert report["checked_tensors"] == 3 * 5
    assert (report["mismatches"], report["unexplained"]) == (0, 0)
    assert all(LABELS[e] in format_report(report) for e in LABELS)


@pytest.mark.parametrize("recipe", ["w1a2", "fp32"])
def test_torch_codes_give_the_features_of_model_outputs(recipe) -> None:
    """The backbone output torch_codes returns is what model_outputs gives (the decision check
    sums the other views onto it): int64 codes for a quantized backbone, float32 for fp32."""
    from lowbit.models.build import build_model
    from lowbit.quant.recipes import get_recipe
    from lowbit.train.evaluation import model_outputs

    model = build_model(get_recipe(recipe)) if recipe == "fp32" else calibrated(recipe, "conv4")
    x = np.random.default_rng(3).uniform(-1, 1, (12, 3, 32, 32)).astype(np.float32)
    codes, _, logits, features = torch_codes(model, x, features=True)
    expected_logits, expected = model_outputs(model, x)
    assert features.dtype == expected.dtype == (np.float32 if recipe == "fp32" else np.int64)
    assert np.array_equal(features, expected) and np.array_equal(logits, expected_logits)
    assert len(torch_codes(model, x)) == 3 and bool(codes) == (recipe != "fp32")


def plant_off_by_one(model, out, inputs) -> tuple[int, int]:
    """Adds 1 to one threshold of LAYER that real accumulators hit exactly, far from a tie.

    Returns (channel, number of code values the bug changes).
    """
    graph = load_graph(out / GRAPH_FILES["int"])
    x = np.concatenate(list(inputs.values()))
    acc = run_int_graph(graph, x)[f"{LAYER}.acc"]  # int32, weight rows already sign-flipped
    _, pre, _ = torch_codes(model, x)
    far = boundary_distance_ulps(pre[LAYER]) > EXPLAINED_ULPS
    init = next(i for i in graph.graph.initializer if i.name == f"{LAYER}.thresholds")
    values = numpy_helper.to_array(init).copy()
    for channel, row in enumerate(values):
        for level, threshold in enumerate(row):
            # a strict step in the row, so the change moves exactly the accumulators == t
            strict = (level == 0 or row[level - 1] < threshold) and (
                level == len(row) - 1 or threshold + 1 < row[level + 1]
            )
            hits = acc[:, channel] == threshold
            if strict and hits.any() and far[:, channel][hits].all():
                values[channel, level] += 1
                init.CopyFrom(numpy_helper.from_array(values, init.name))
                onnx.save(graph, str(out / GRAPH_FILES["int"]))
                seal(out, read_manifest(out)["files"])  # as if the exporter had the bug
                return channel, int(hits.sum())
    raise AssertionError("no threshold of the layer is hit exactly: choose other inputs")


def test_planted_threshold_bug_is_caught(exported, tmp_path) -> None:
    model, out, _, inputs = exported
    planted = tmp_path / "planted"
    shutil.copytree(out, planted)
    channel, changed = plant_off_by_one(model, planted, inputs)
    report = verify_export(model, planted, inputs, executors=("runtime",), progress=False)
    assert report["unexplained"] > 0
    rows = {row["tensor"]: row for row in report["layers"]}
    # exactly the accumulators equal to the moved threshold drop one code, none near a tie
    assert rows[LAYER]["mismatches"] == changed
    assert rows[LAYER]["unexplained"] == changed
    # earlier tensors are untouched
    assert rows["backbone.input_quant"]["mismatches"] == 0
    assert rows["backbone.blocks.0.act"]["mismatches"] == 0
    first = report["first_mismatch"]
    assert first["executor"] == "runtime" and first["tensor"] == LAYER
    assert first["channel"] == channel and first["index"][1] == channel
    assert first["got"] == first["expected"] - 1
    assert first["distance_ulps"] > EXPLAINED_ULPS
    text = format_report(report)
    assert LAYER in text and "first mismatch" in text and f"(channel {channel})" in text
    # the witnesses do not read model.int.onnx: they still agree with the float model
    witnesses = verify_export(model, planted, inputs, executors=("qcdq",), progress=False)
    assert witnesses["unexplained"] == 0


def test_missing_and_corrupt_graphs(exported, tmp_path) -> None:
    model, out, _, inputs = exported
    with pytest.raises(ModelFileError, match="missing"):
        load_graph(tmp_path / "model.int.onnx")
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / GRAPH_FILES["qcdq"]).write_bytes(b"not a protobuf at all \x00\xff")
    with pytest.raises(ModelFileError, match="model.qcdq.onnx"):
        verify_export(model, broken, inputs, executors=("qonnx",), progress=False)


# --- compare: exact codes, explained and unexplained mismatches --------------------------------


@pytest.mark.parametrize(
    ("pre", "ulps"),
    [
        (0.5, 0.0),
        (-0.5, 0.0),
        (2.5, 0.0),
        (0.5 + 3 * 2.0**-24, 3.0),  # float32 spacing in [0.5, 1) is 2^-24
        (0.5 - 2.0**-24, 1.0),  # below 0.5 the spacing halves; distances count at the boundary
        (2.5 - 2.0**-22, 1.0),  # spacing in [2, 4) is 2^-22
        (-1.5 + 2.0**-23, 1.0),
        (1000.5 + 2.0**-14, 1.0),  # spacing in [512, 1024) is 2^-14
        (1.0, 0.5 / 2.0**-23),  # an integer is half a step from both boundaries
    ],
)
def test_boundary_distance_ulps(pre: float, ulps: float) -> None:
    assert boundary_distance_ulps(np.array([pre], np.float32)).tolist() == [ulps]


def test_tail_tolerance_positive_and_growing() -> None:
    base = tail_tolerance(10.0, 64)
    assert 0 < base < 1e-3
    assert tail_tolerance(10.0, 256) > base and tail_tolerance(20.0, 64) == 2 * base


def test_compare_tail() -> None:
    ref = np.array([[1.0, 2.0], [3.0, 0.5]], np.float32)
    ok = compare_tail(ref, ref.astype(np.float64) + 1e-7, 1e-6)
    assert ok["ok"] and ok["argmax_agree"] == 1.0
    bad = compare_tail(ref, ref.astype(np.float64) + np.array([[0, 0], [0, 3.0]]), 1e-6)
    assert not bad["ok"] and bad["max_abs_diff"] == 3.0 and bad["argmax_agree"] == 0.5
    assert not compare_tail(ref, ref[:1], 1e-6)["ok"]


def codes_and_pre(shape, seed: int = 0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 4, size=shape)
    pre = (codes + rng.uniform(-0.4, 0.4, size=shape)).astype(np.float32)  # far from any tie
    return codes, pre


def test_compare_codes_exact_and_classified() -> None:
    a_codes, a_pre = codes_and_pre((3, 2, 4, 4))
    b_codes, b_pre = codes_and_pre((3, 2, 4, 4), seed=1)
    reference = {"a": a_codes, "b": b_codes}
    pre = {"a": a_pre, "b": b_pre}
    rows, first, _ = compare_codes(reference, pre, {"a": a_codes.copy(), "b": b_codes.copy()}, "x")
    assert first is None and [r["mismatches"] for r in rows] == [0, 0]
    # a mismatch whose pre-rounding value sits on a tie: explained
    near = {"a": a_codes.copy(), "b": b_codes.copy()}
    pre["a"][1, 1, 2, 3] = np.float32(2.5)
    near["a"][1, 1, 2, 3] = 3 if reference["a"][1, 1, 2, 3] == 2 else 2
    reference["a"][1, 1, 2, 3] = 2 if near["a"][1, 1, 2, 3] == 3 else 3
    rows, first, _ = compare_codes(reference, pre, near, "x")
    assert (rows[0]["mismatches"], rows[0]["unexplained"]) == (1, 0)
    assert first["tensor"] == "a" and first["index"] == [1, 1, 2, 3] and first["channel"] == 1
    assert first["distance_ulps"] == 0.0
    # in tensor b, the same image mismatching far from a tie: inherited from a, explained
    near["b"][1, 0, 0, 0] += 1
    rows, _, _ = compare_codes(reference, pre, near, "x")
    assert (rows[1]["mismatches"], rows[1]["unexplained"]) == (1, 0)
    # another image mismatching far from a tie, with nothing upstream: unexplained
    near["b"][2, 0, 0, 0] += 1
    rows, _, _ = compare_codes(reference, pre, near, "x")
    assert (rows[1]["mismatches"], rows[1]["unexplained"]) == (2, 1)


def test_compare_codes_shape_mismatch_is_unexplained() -> None:
    codes, pre = codes_and_pre((2, 3))
    rows, _, _ = compare_codes({"a": codes}, {"a": pre}, {"a": codes[:1]}, "x")
    assert rows[0]["unexplained"] == codes.size and "shape" in rows[0]["error"]


def test_compare_codes_float_summation_bound() -> None:
    """A mismatch 0.01 steps from a tie: unexplained at bound 0, explained within the bound."""
    codes, pre = codes_and_pre((2, 2, 3, 3))
    pre[0, 1, 1, 1] = np.float32(4.49)  # 0.01 steps below the 4.5 boundary: ~20,000 ulps
    codes[0, 1, 1, 1] = 4
    moved = codes.copy()
    moved[0, 1, 1, 1] = 5
    rows, first, _ = compare_codes({"a": codes}, {"a": pre}, {"a": moved}, "x")
    assert (rows[0]["mismatches"], rows[0]["unexplained"]) == (1, 1)
    assert abs(first["distance_steps"] - 0.01) < 1e-6  # float32 4.49 is 4.4899998...
    rows, first, _ = compare_codes({"a": codes}, {"a": pre}, {"a": moved}, "x", {"a": 0.02})
    assert (rows[0]["mismatches"], rows[0]["unexplained"]) == (1, 0)
    assert first["float_error_steps"] == 0.02
    rows, _, _ = compare_codes({"a": codes}, {"a": pre}, {"a": moved}, "x", {"a": 0.005})
    assert rows[0]["unexplained"] == 1


def test_boundary_inputs_land_on_thresholds_and_ties(exported) -> None:
    """Constructed images put first-layer accumulators exactly on thresholds, planted ties too."""
    from lowbit.runtime import Runtime
    from lowbit.verify.boundary import boundary_inputs, threshold_hits, threshold_layers

    model, out, description, inputs = exported
    graph = load_graph(out / GRAPH_FILES["int"])
    images, stats = boundary_inputs(
        graph,
        inputs["random"],
        count=32,
        input_scale=description["input"]["input_scale"],
        input_bits=description["input"]["input_bits"],
        seed=0,
    )
    assert stats["targets"] == 32 and stats["hits"] == len(images) >= 28
    code, acc_name, thresholds = threshold_layers(graph)[0]
    acc = Runtime(graph).run(images, keep_intermediates=True)[acc_name]
    assert all(threshold_hits(acc[i : i + 1], thresholds) > 0 for i in range(len(images)))
    _, pre, _ = torch_codes(model, images)
    assert np.any(pre[code] - np.floor(pre[code]) == 0.5)  # exact ties of the float model
    report = verify_export(model, out, {"boundary": images}, progress=False, write=False)
    assert report["mismatches"] == 0
    rows = {r["tensor"]: r for r in report["layers"] if r["executor"] == "runtime"}
    assert rows[code]["on_threshold"] >= len(images)


def test_build_inputs_adds_boundary_set(exported) -> None:
    _, out, description, _ = exported
    graph = load_graph(out / GRAPH_FILES["int"])
    sets = build_inputs(description, None, n=0, random=16, ties=True, seed=0, int_graph=graph)
    assert set(sets) == {"random", "ties", "boundary"} and len(sets["boundary"]) > 0


def test_float_scale_linear_head_tail_within_its_stated_bound(tmp_path) -> None:
    """Linear head, float scales: torch's float32 dot products round; the per-element bound holds.

    The bound is Higham's gamma_(F+1) * sum|f w| from the integer codes, so it is tight where the
    logits are small and is never a blanket tolerance; a cosine graph gets None (its own bound).
    """
    import torch

    from lowbit.models import build_model
    from lowbit.quant import get_recipe
    from lowbit.runtime import Runtime
    from lowbit.verify.summation import linear_head, linear_tail_tolerance

    torch.manual_seed(0)
    model = build_model(
        get_recipe("w8a8", pow2_scales=False),
        backbone="conv4",
        head="linear",
        width=8,
        image_size=32,
        num_classes=4,
    ).train()
    with torch.no_grad():
        for _ in range(40):
            model(torch.randn(4, 3, 32, 32).clamp(-2, 2))
    model.eval()
    description = export_model(
        model, tmp_path, class_names=["a", "b", "c", "d"], normalization={"mean": [0.5] * 3}
    )
    inputs = build_inputs(description, None, n=0, random=48, ties=True, seed=0)
    report = verify_export(model, tmp_path, inputs, progress=False, write=False)
    assert report["unexplained"] == 0, report["first_mismatch"]
    graph = load_graph(tmp_path / GRAPH_FILES["int"])
    tensors = Runtime(graph).run(inputs["random"], keep_intermediates=True)
    bound = linear_tail_tolerance(linear_head(graph), tensors, 0.0)
    assert bound.shape == tensors["logits"].shape and np.all(bound > 0)
    # far below the logits themselves: a tolerance that could hide a wrong class dot product
    # (one weight code off changes a logit by tail_factor * |f|) would be useless
    assert np.median(bound / np.maximum(np.abs(tensors["logits"]), 1e-6)) < 1e-3
    cosine = load_graph(_cosine_export(tmp_path / "cos") / GRAPH_FILES["int"])
    assert linear_tail_tolerance(linear_head(cosine), tensors, 0.0) is None


def _cosine_export(out):
    model = calibrated("w2a2", "conv4")
    export_model(model, out, class_names=["a", "b", "c", "d"], normalization={"mean": [0.5] * 3})
    return out
