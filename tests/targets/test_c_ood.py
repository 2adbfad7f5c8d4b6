"""The C target's unknown-type score and decision equal `lowbit predict`'s (the numpy runtime).

Differential tests: models exported with a rel_mahalanobis detector fitted on class-structured
images (each of the 4 classes a colour plus noise); on 256 inputs (the 64 calibration images, 64
fresh images of the same classes, 96 seeded random images, 32 input-quantizer ties) the compiled
C `known` equals lowbit.fewshot.predict.decide on the runtime's logits and feature codes, and
|score_C - score_numpy| stays within the tolerance stated in lowbit/targets/c/ood.py. Models:
conv4 w2a2 (cosine head: n from the head), conv4 w8a8 with a linear head (n computed for the
score), resnet8 w2a2 (int32 summed features). With model.json's ood.views = V the C score reads the
features summed over V dihedral views, compared with the same score on the runtime's summed
features (conv4 w2a2 rel_mahalanobis at 8 views, resnet8 w2a2 prototype at 2), while the logits
and the debug tap stay those of the image itself.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess

import numpy as np
import onnx
import pytest
import torch

from lowbit.artifacts import STATS_FILE
from lowbit.core.feature_scores import (
    FEATURE_TENSOR,
    drop_class,
    load_export_stats,
    normalize_rows,
    residual_score,
)
from lowbit.core.views import MAX_VIEWS, dihedral_view
from lowbit.errors import ModelFileError
from lowbit.export.api import export_model
from lowbit.fewshot.features import runtime_view_outputs
from lowbit.fewshot.openset import calibrate_threshold, integer_calibration, ood_score
from lowbit.fewshot.predict import decide
from lowbit.runtime import Runtime
from lowbit.targets.c.ood import compare_scores, score_tolerance
from lowbit.targets.c.ops import build_plan
from lowbit.targets.c.run import CFLAGS, CModel, compile_c_target, find_compiler
from lowbit.targets.c.target import C_DIR, file_names, generate_c, write_c_target
from lowbit.targets.c.views import DIHEDRAL_VIEW, check_views, feature_bound
from tests.export.helpers import IMAGE_SIZE, NUM_CLASSES, calibrated, make_calibrated, sample_inputs

NORMALIZATION = {"mean": [0.5] * 3, "std": [0.25] * 3}
CLASS_NAMES = list("abcd")[:NUM_CLASSES]
needs_cc = pytest.mark.skipif(find_compiler() is None, reason="no C compiler (cc, gcc, clang)")

MODELS = {
    "w2a2-conv4": lambda: calibrated("w2a2", "conv4"),
    "w8a8-conv4-linear": lambda: make_calibrated("w8a8", "conv4", head="linear"),
    "w2a2-resnet8": lambda: calibrated("w2a2", "resnet8"),
}
CONV4_SCORES = ("msp", "max_logit", "energy", "prototype", "mahalanobis", "residual", "vim")
CASES = [
    *[("w2a2-conv4", s) for s in CONV4_SCORES],
    ("w8a8-conv4-linear", "msp"),
    ("w8a8-conv4-linear", "prototype"),
    ("w8a8-conv4-linear", "vim"),
    ("w2a2-resnet8", "prototype"),
    ("w2a2-resnet8", "residual"),
]


def class_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images, labels): class c is one fixed colour plus seeded noise, normalized."""
    labels = np.arange(count) % NUM_CLASSES
    colours = np.random.default_rng(99).uniform(-1.5, 1.5, (NUM_CLASSES, 3))
    noise = np.random.default_rng(seed).normal(0.0, 0.5, (count, 3, IMAGE_SIZE, IMAGE_SIZE))
    return np.clip(colours[labels][:, :, None, None] + noise, -2, 2).astype(np.float32), labels


def deploy(name: str, out, views: int = 1) -> tuple:
    """(export dir, model.json, 256 inputs, runtime outputs) of model `name` with its detector
    (rel_mahalanobis on the features summed over `views` dihedral views)."""
    torch.set_num_threads(1)
    model = MODELS[name]()
    x_train, y_train = class_images(64, seed=1)
    x_val, _ = class_images(64, seed=2)
    fit = (x_train, y_train, NUM_CLASSES)
    ood = integer_calibration(x_val, "rel_mahalanobis", 0.95, fit=fit, views=views)
    description = export_model(
        model, out, class_names=CLASS_NAMES, normalization=NORMALIZATION, ood=ood
    )
    inputs = [x_val, class_images(64, seed=3)[0], sample_inputs(model, random=96, ties=32)]
    x = np.concatenate(inputs)
    return out, description, x, Runtime(out / "model.int.onnx").run(x, keep_intermediates=True)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """deployed(name): the export of `deploy`, built once per module."""
    exports: dict[str, tuple] = {}

    def get(name: str) -> tuple:
        if name not in exports:
            exports[name] = deploy(name, tmp_path_factory.mktemp(name))
        return exports[name]

    return get


def compiled(out, name: str) -> CModel:
    library = compile_c_target(out, out / f"{name}.so")
    return CModel(library, NUM_CLASSES)


def check_against_numpy(
    description: dict, stats, x, outputs, c_model: CModel, features=None
) -> dict:
    """Runs the C model; asserts it agrees with decide() on the runtime; returns the counts.
    `features`: what the score reads, the runtime's features of the images unless given (their
    sum over views)."""
    ood = description["ood"]
    features = outputs[FEATURE_TENSOR] if features is None else features
    rows = decide(outputs["logits"], CLASS_NAMES, ood, features, stats)
    scores = np.array([row["score"] for row in rows])
    known = np.array([row["known"] for row in rows])
    got = c_model.run(x)
    assert np.array_equal(got["argmax"], outputs["logits"].argmax(axis=1))
    tolerance = score_tolerance(ood["score"], scores, outputs["logits"], features, stats)
    counts = compare_scores(
        got["ood_score"], got["known"], scores, known, tolerance, ood["threshold"]
    )
    assert counts["checked"] == len(x) == 256
    assert counts["out_of_tolerance"] == 0, counts
    assert counts["unexplained"] == 0, counts
    # Explained flips need numpy's score within the tolerance (<= 1e-7 here) of the threshold:
    # only the calibration image that sets the threshold sits there, exactly on it.
    near = int(np.sum(np.abs(scores - ood["threshold"]) <= tolerance))
    assert counts["explained"] <= near <= 1, (counts, near)
    assert 0 < known.sum() < len(known)  # both decisions occur
    return counts


@needs_cc
@pytest.mark.parametrize("name", list(MODELS))
def test_deployed_rel_mahalanobis_decides_like_predict(deployed, name) -> None:
    """write_c_target reads model.ood.npz; the C decision is `lowbit predict`'s."""
    out, description, x, outputs = deployed(name)
    assert description["ood"]["score"] == "rel_mahalanobis"
    write_c_target(out, description)
    stats = load_export_stats(out, description)
    check_against_numpy(description, stats, x, outputs, compiled(out / C_DIR, "deployed"))


@needs_cc
@pytest.mark.parametrize("name, score", CASES)
def test_every_score_decides_like_numpy(deployed, name, score, tmp_path) -> None:
    """Each score, its threshold calibrated on the runtime's val outputs, given to generate_c."""
    out, description, x, outputs = deployed(name)
    stats = load_export_stats(out, description)
    val = slice(0, 64)  # x starts with the calibration images
    val_scores = ood_score(outputs["logits"][val], score, outputs[FEATURE_TENSOR][val], stats)
    ood = {**description["ood"], "score": score, "threshold": calibrate_threshold(val_scores)}
    description = {**description, "ood": ood}
    graph = onnx.load(str(out / "model.int.onnx"))
    for file, text in generate_c(graph, description, stats=stats).items():
        (tmp_path / file).write_text(text)
    check_against_numpy(description, stats, x, outputs, compiled(tmp_path, score))


@needs_cc
def test_header_states_score_and_exact_threshold(deployed) -> None:
    out, description, _, _ = deployed("w2a2-conv4")
    write_c_target(out, description)
    header = (out / C_DIR / file_names("lowbit")[0]).read_text()
    assert '#define LOWBIT_OOD_SCORE "rel_mahalanobis"' in header
    assert "#define LOWBIT_OOD_HAS_THRESHOLD 1" in header
    literal = re.search(r"#define LOWBIT_OOD_THRESHOLD \((\S+)\)", header).group(1)
    assert float.fromhex(literal) == description["ood"]["threshold"]


@pytest.fixture
def export_copy(deployed, tmp_path):
    """A private copy of the conv4 w2a2 export folder and its model.json."""
    out, description, _, _ = deployed("w2a2-conv4")
    target = tmp_path / "export"
    shutil.copytree(out, target)
    return target, description


def test_missing_statistics_name_the_file(export_copy) -> None:
    out, description = export_copy
    (out / STATS_FILE).unlink()
    with pytest.raises(ModelFileError, match=re.escape(str(out / STATS_FILE))):
        write_c_target(out, description)


def test_altered_statistics_name_the_file(export_copy) -> None:
    out, description = export_copy
    blob = bytearray((out / STATS_FILE).read_bytes())
    blob[-1] ^= 1
    (out / STATS_FILE).write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match=f"{re.escape(str(out / STATS_FILE))}: sha256"):
        write_c_target(out, description)


def test_feature_score_without_statistics_names_model_json(export_copy) -> None:
    out, description = export_copy
    ood = {k: v for k, v in description["ood"].items() if k != "stats"}
    with pytest.raises(ModelFileError, match=re.escape(str(out / "model.json"))) as error:
        write_c_target(out, {**description, "ood": ood})
    assert len(str(error.value).splitlines()) == 1


def test_statistics_of_another_model_are_refused(export_copy) -> None:
    out, description = export_copy
    stats = drop_class(load_export_stats(out, description), 0)  # 3 classes, the graph has 4
    graph = onnx.load(str(out / "model.int.onnx"))
    with pytest.raises(ModelFileError, match="class_means_white"):
        generate_c(graph, description, stats=stats)
    with pytest.raises(ModelFileError, match="needs its feature statistics"):
        generate_c(graph, description)


def test_residual_statistics_of_another_width_are_refused(export_copy) -> None:
    out, description = export_copy
    stats = load_export_stats(out, description)
    graph = onnx.load(str(out / "model.int.onnx"))
    ood = {**description["ood"], "score": "vim"}
    narrow = {**stats, "principal_complement": stats["principal_complement"][:, 1:]}
    with pytest.raises(ModelFileError, match="principal_complement"):
        generate_c(graph, {**description, "ood": ood}, stats=narrow)
    without_alpha = {k: v for k, v in stats.items() if k != "vim_alpha"}
    with pytest.raises(ModelFileError, match="vim_alpha"):
        generate_c(graph, {**description, "ood": ood}, stats=without_alpha)


def test_compare_scores_explains_only_flips_near_the_threshold() -> None:
    scores = np.array([1.0, 2.0, 3.0, 2.0 + 1e-13])
    known = scores >= 2.0
    c_scores = np.array([1.0, 2.0 - 1e-15, 3.0, 2.0 - 1e-15])
    c_known = c_scores >= 2.0
    tolerance = np.full(4, 1e-12)
    counts = compare_scores(c_scores, c_known, scores, known, tolerance, 2.0)
    assert counts == {
        "checked": 4,
        "max_abs_diff": float(np.abs(c_scores - scores).max()),
        "out_of_tolerance": 0,
        "decisions_differ": 2,
        "explained": 2,
        "unexplained": 0,
    }
    c_known[2] = False  # a far-from-threshold flip is a bug
    assert compare_scores(c_scores, c_known, scores, known, tolerance, 2.0)["unexplained"] == 1
    far = compare_scores(scores + 1e-9, known, scores, known, tolerance, 2.0)
    assert far["out_of_tolerance"] == 4


def test_residual_tolerance_is_tight_at_a_zero_residual() -> None:
    """A centered feature inside the principal subspace has residual 0 in exact arithmetic and
    ~1e-17 in float64: the C kernel's summation order stays within the tolerance, and the
    tolerance stays ~1e-12 (sqrt of a 1e-12-sized error of the sum of squares would be 1e-6)."""
    rng = np.random.default_rng(5)
    basis = np.linalg.qr(rng.normal(size=(16, 16)))[0].T  # orthonormal rows
    principal, complement = basis[:4], basis[4:]
    features = rng.integers(0, 4, (32, 16))
    features[0] = 0  # all-zero codes: z = 0
    mean = normalize_rows(features)[1] - rng.normal(size=4) @ principal
    stats = {"global_mean": mean, "principal_complement": complement}

    def c_kernel(offset: np.ndarray) -> float:  # lb_residual_norm's loops, in Python floats
        sum_of_squares = 0.0
        for row in complement.tolist():
            projection = 0.0
            for o, c in zip(offset.tolist(), row, strict=True):
                projection += o * c
            sum_of_squares += projection * projection
        return float(np.sqrt(sum_of_squares))

    c_scores = -np.array([c_kernel(o) for o in normalize_rows(features) - mean])
    scores = residual_score(features, stats)
    tolerance = score_tolerance("residual", scores, np.zeros((32, 4)), features, stats)
    assert abs(scores[1]) < 1e-15  # row 1's offset lies in the principal subspace
    assert np.all(np.abs(c_scores - scores) <= tolerance)
    assert tolerance[1] < 1e-11


# --- dihedral views ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deployed_views(tmp_path_factory):
    """The conv4 w2a2 export of `deploy` at 8 views, its C library with the debug tap, and the
    runtime's features of the 256 inputs summed over the 8 views."""
    if find_compiler() is None:
        pytest.skip("no C compiler (cc, gcc, clang)")
    out, description, x, outputs = deploy("w2a2-conv4", tmp_path_factory.mktemp("views"), views=8)
    write_c_target(out, description)
    library = compile_c_target(out / C_DIR, out / "tap.so", tap=True)
    features = runtime_view_outputs(Runtime(out / "model.int.onnx"), x, 8)[1]
    return out, description, x, outputs, CModel(library, NUM_CLASSES), features


def test_deployed_views_decide_like_predict(deployed_views) -> None:
    """8 views: the C score equals rel_mahalanobis of the runtime's features summed over the
    views; the logits stay bit-identical to the image's own."""
    out, description, x, outputs, c_model, features = deployed_views
    assert description["ood"]["views"] == 8
    header = (out / C_DIR / file_names("lowbit")[0]).read_text()
    assert "#define LOWBIT_OOD_VIEWS 8" in header
    stats = load_export_stats(out, description)
    check_against_numpy(description, stats, x, outputs, c_model, features)
    assert np.array_equal(c_model.run(x[:16])["logits"], outputs["logits"][:16])


def test_views_tap_reports_the_image_itself(deployed_views) -> None:
    """The debug tap reports each tensor once per image, the runtime's tensor of view 0."""
    _, _, x, outputs, c_model, _ = deployed_views
    got = c_model.run(x[:32], keep_intermediates=True)
    assert FEATURE_TENSOR in got["tensors"]
    for name, values in got["tensors"].items():
        assert np.array_equal(values, outputs[name][:32].reshape(32, -1)), name
    assert ctypes.c_void_p.in_dll(c_model.lib, "lowbit_tap").value  # restored after the views


@needs_cc
def test_views_of_resnet8_prototype_decide_like_numpy(deployed, tmp_path) -> None:
    """2 views (the mirror image) of resnet8, whose features are int32 sums over the plane:
    the statistics and threshold calibrated on the summed features, given to generate_c."""
    out, description, x, outputs = deployed("w2a2-resnet8")
    x_train, y_train = class_images(64, seed=1)
    fit = (x_train, y_train, NUM_CLASSES)
    calibrate = integer_calibration(x[:64], "prototype", 0.95, fit=fit, views=2)
    ood = calibrate(out / "model.int.onnx")
    stats = ood.pop("stats_arrays")
    description = {**description, "ood": ood}
    graph = onnx.load(str(out / "model.int.onnx"))
    for file, text in generate_c(graph, description, stats=stats).items():
        (tmp_path / file).write_text(text)
    features = runtime_view_outputs(Runtime(out / "model.int.onnx"), x, 2)[1]
    c_model = compiled(tmp_path, "views")
    check_against_numpy(description, stats, x, outputs, c_model, features)


@needs_cc
def test_dihedral_view_kernel_equals_numpy(tmp_path) -> None:
    """lb_dihedral_view gives lowbit.core.views.dihedral_view of CHW codes, for every view."""
    source = tmp_path / "view.c"
    source.write_text("#include <stdint.h>\n" + DIHEDRAL_VIEW.substitute(X="int8_t") + (
        "void view(const int8_t *x, int c, int h, int w, int v, int8_t *y)\n"
        "{ lb_dihedral_view(x, c, h, w, v, y); }\n"
    ))  # fmt: skip
    library = tmp_path / "view.so"
    command = [find_compiler(), "-O2", *CFLAGS, "-fPIC", "-shared", str(source), "-o", str(library)]
    assert subprocess.run(command, check=False).returncode == 0
    run = ctypes.CDLL(str(library)).view
    run.argtypes = [ctypes.c_void_p, *[ctypes.c_int] * 4, ctypes.c_void_p]
    codes = np.arange(2 * 5 * 5, dtype=np.int8).reshape(1, 2, 5, 5)  # every code distinct
    for view in range(MAX_VIEWS):
        got = np.zeros_like(codes)
        run(codes.ctypes.data, 2, 5, 5, view, got.ctypes.data)
        assert np.array_equal(got, dihedral_view(codes, view)), view
    wide = np.arange(2 * 3 * 5, dtype=np.int8).reshape(1, 2, 3, 5)  # flips need no square
    for view in range(4):
        got = np.zeros_like(wide)
        run(wide.ctypes.data, 2, 3, 5, view, got.ctypes.data)
        assert np.array_equal(got, dihedral_view(wide, view)), view


def test_views_the_c_target_cannot_run_name_the_field(export_copy) -> None:
    """A score that reads one view, a view count outside 1, 2, 4, 8, or transposing views of a
    non-square input: one-line ModelFileErrors naming model.json's ood.views."""
    out, description = export_copy
    stats = load_export_stats(out, description)
    graph = onnx.load(str(out / "model.int.onnx"))

    def generate(graph, **changes) -> None:
        generate_c(graph, {**description, "ood": {**description["ood"], **changes}}, stats=stats)

    for changes in ({"score": "vim", "views": 8}, {"views": 3}, {"views": True}):
        with pytest.raises(ModelFileError, match=r"model\.json: ood\.views") as error:
            generate(graph, **changes)
        assert len(str(error.value).splitlines()) == 1
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    dims[3].dim_value = IMAGE_SIZE // 2  # 32 x 16: the features shrink too, checked afterwards
    with pytest.raises(ModelFileError, match=r"ood\.views: 4 views transpose.*32x16"):
        generate(graph, views=4)


@pytest.mark.parametrize("name", ["w2a2-conv4", "w2a2-resnet8"])
def test_views_bound_the_square_sum(deployed, name) -> None:
    """The feature bound comes from the last threshold's 2-bit codes (0..3), times the plane
    size for resnet8's summed features; a bound that lets n reach 2^53 is refused."""
    out, description, _, outputs = deployed(name)
    plan = build_plan(onnx.load(str(out / "model.int.onnx")), description, "model.int.onnx")
    bound = feature_bound(plan)
    assert outputs[FEATURE_TENSOR].max() <= bound
    plane = 1 if name == "w2a2-conv4" else 8 * 8  # resnet8: summed over its last 8 x 8 map
    assert bound == 3 * plane
    assert check_views(plan, {"score": "prototype", "views": 8}, "prototype") == 8
    plan.code_ranges = {key: (0, 2**24) for key in plan.code_ranges}
    with pytest.raises(ModelFileError, match=r"ood\.views: .* may reach 2\^53"):
        check_views(plan, {"score": "prototype", "views": 8}, "prototype")
