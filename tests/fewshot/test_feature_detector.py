"""A feature-score detector deployed in an export: fitted at export, used by predict, verify and
enroll, identical from the fake-quant model and from the integer runtime. The export deploys the
default view count (features summed over 8 dihedral views, lowbit/core/views.py)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from lowbit.core.feature_scores import fit_feature_stats, load_export_stats, normalize_rows
from lowbit.core.scores import DEFAULT_OOD_VIEWS, score
from lowbit.core.views import view_outputs
from lowbit.deploy import export_run
from lowbit.errors import ConfigError, ModelFileError
from lowbit.fewshot import calibrate_threshold, enroll_class, predict, remove_class, save_images
from lowbit.fewshot.features import runtime_outputs, runtime_view_outputs
from lowbit.runtime import Runtime
from lowbit.train import load_run
from lowbit.train.evaluation import feature_codes, model_outputs, predict_logits
from lowbit.train.run import splits_for
from lowbit.verify.run import verify_run
from tests.fewshot.conftest import NOVEL

SCORE = "rel_mahalanobis"
VIEWS = DEFAULT_OOD_VIEWS
DETECTOR = f"{SCORE}@{VIEWS}views"
FAST = {"verify_n": 16, "verify_random": 16}


@pytest.fixture
def feature_export(copy_export):
    export_run(copy_export, ood_score=SCORE)
    return copy_export


def test_export_fits_on_train_and_calibrates_on_val(feature_export, tmp_path):
    description = json.loads((feature_export / "model.json").read_text())
    ood = description["ood"]
    assert ood["score"] == SCORE and ood["calibrated_on"] == "val" and ood["views"] == VIEWS
    stats_file = feature_export / ood["stats"]["file"]
    assert ood["stats"]["sha256"] == hashlib.sha256(stats_file.read_bytes()).hexdigest()
    _, record = load_run(feature_export)
    splits = splits_for(record)
    assert ood["stats"]["fitted_images"] == len(splits.train.y)
    # the statistics are those of the training split's features summed over the views
    runtime = Runtime(feature_export / "model.int.onnx")
    stats = load_export_stats(feature_export, description)
    _, train_features = runtime_view_outputs(runtime, splits.train.x, VIEWS)
    fitted = fit_feature_stats(train_features, splits.train.y, len(record["class_names"]))
    for name in ("class_whitening", "class_means_white", "background_whitening"):
        assert np.array_equal(stats[name], fitted[name]), name
    # the threshold is the calibration's on the runtime's own val scores: exactly 95 % kept
    logits, features = runtime_view_outputs(runtime, splits.val.x, VIEWS)
    scores = score(SCORE, logits, features, stats)
    assert ood["threshold"] == calibrate_threshold(scores, 0.95)
    rows = predict(feature_export, save_images(splits.val.x, tmp_path / "val"))
    known = np.array([row["known"] for row in rows])
    assert np.array_equal(known, scores >= ood["threshold"])
    assert known.mean() >= 0.95 and rows[0]["score_name"] == DETECTOR
    assert [row["score"] for row in rows] == scores.tolist()


def test_fake_quant_and_runtime_give_the_same_scores(feature_export):
    """Exact integer features from both, so bit-identical float64 scores (>= 1,000 inputs)."""
    model, record = load_run(feature_export)
    splits = splits_for(record)
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            splits.val.x,
            splits.test.x,
            splits.ood.x,
            rng.normal(0, 1, (1000, *splits.val.x.shape[1:])),
        ]
    ).astype(np.float32)[:1200]
    assert len(x) >= 1000
    description = json.loads((feature_export / "model.json").read_text())
    stats = load_export_stats(feature_export, description)
    torch_features = feature_codes(model, x)
    logits, runtime_feats = runtime_outputs(Runtime(feature_export / "model.int.onnx"), x)
    assert np.array_equal(torch_features, runtime_feats)
    for name in ("prototype", "mahalanobis", "rel_mahalanobis", "residual"):
        assert np.array_equal(
            score(name, None, torch_features, stats), score(name, None, runtime_feats, stats)
        ), name
    # vim adds the logit tail: equal within the tail's stated tolerance, not bit for bit
    np.testing.assert_allclose(predict_logits(model, x), logits, rtol=0, atol=1e-3)
    # the deployed detector's features, summed over the views, are equal integers too
    runtime = Runtime(feature_export / "model.int.onnx")
    _, torch_summed = view_outputs(lambda images: model_outputs(model, images), x, VIEWS)
    _, runtime_summed = runtime_view_outputs(runtime, x, VIEWS)
    assert torch_summed.dtype == runtime_summed.dtype == np.int64
    assert np.array_equal(torch_summed, runtime_summed)
    assert not np.array_equal(torch_summed, VIEWS * torch_features)  # the views do differ
    assert np.array_equal(
        score(SCORE, None, torch_summed, stats), score(SCORE, None, runtime_summed, stats)
    )


def test_verify_checks_the_deployed_decision(feature_export):
    report = verify_run(feature_export, n=32, random=32, executors=("runtime",), progress=False)
    decisions = report["decisions"]
    assert decisions["score"] == DETECTOR
    runtime = decisions["runtime"]
    assert runtime["checked"] == runtime["scores_equal"] > 0
    assert runtime["decisions_differ"] == runtime["unexplained"] == 0
    assert report["unexplained"] == 0


def test_enroll_refits_and_remove_restores_the_statistics(feature_export, tmp_path):
    before = load_export_stats(
        feature_export, json.loads((feature_export / "model.json").read_text())
    )
    _, record = load_run(feature_export)
    splits = splits_for(record)
    novel = splits.ood.x[splits.ood_types == list(splits.unknown_names).index(NOVEL[0])][:5]
    enroll_class(feature_export, NOVEL[0], save_images(novel, tmp_path / "novel"), **FAST)
    description = json.loads((feature_export / "model.json").read_text())
    after = load_export_stats(feature_export, description)
    assert after["prototypes"].shape[0] == before["prototypes"].shape[0] + 1
    _, support = runtime_view_outputs(Runtime(feature_export / "model.int.onnx"), novel, VIEWS)
    mean = normalize_rows(support).mean(axis=0)
    assert np.array_equal(after["prototypes"][-1], normalize_rows(mean[None])[0])
    assert np.array_equal(after["class_whitening"], before["class_whitening"])
    assert (
        feature_export / "enrolled/001/previous" / description["ood"]["stats"]["file"]
    ).is_file()
    # the new class's own images now score as known more often than before enrollment
    assert description["ood"]["score"] == SCORE
    remove_class(feature_export, NOVEL[0], **FAST)
    again = load_export_stats(
        feature_export, json.loads((feature_export / "model.json").read_text())
    )
    for name in before:
        assert np.array_equal(again[name], before[name]), name


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda path: path.write_bytes(path.read_bytes()[:100]), "sha256"),
        (lambda path: path.unlink(), "cannot read"),
    ],
)
def test_damaged_statistics_are_refused_with_one_line(feature_export, tmp_path, damage, message):
    description = json.loads((feature_export / "model.json").read_text())
    damage(feature_export / description["ood"]["stats"]["file"])
    _, record = load_run(feature_export)
    paths = save_images(splits_for(record).val.x[:2], tmp_path / "val")
    with pytest.raises(ModelFileError, match=message):
        predict(feature_export, paths)


def test_stats_file_name_cannot_leave_the_export(feature_export, tmp_path):
    path = feature_export / "model.json"
    description = json.loads(path.read_text())
    description["ood"]["stats"]["file"] = "../model.json"
    path.write_text(json.dumps(description))
    with pytest.raises(ModelFileError, match="file name in the export folder"):
        load_export_stats(feature_export, description)


def test_infer_on_an_export_folder_writes_the_decision(feature_export, tmp_path):
    from lowbit.infer import infer_file

    _, record = load_run(feature_export)
    x = splits_for(record).val.x[:40]
    np.save(tmp_path / "x.npy", x)
    infer_file(feature_export, tmp_path / "x.npy", tmp_path / "y.npz")
    with np.load(tmp_path / "y.npz") as saved:
        outputs = dict(saved)
    rows = predict(feature_export, save_images(x, tmp_path / "img"))
    assert np.array_equal(outputs["known"], [row["known"] for row in rows])
    assert outputs["ood_score"].tolist() == [row["score"] for row in rows]
    # a bare graph file has no detector: the graph's outputs only
    infer_file(feature_export / "model.int.onnx", tmp_path / "x.npy", tmp_path / "z.npz")
    with np.load(tmp_path / "z.npz") as saved:
        assert "known" not in saved.files


def test_verify_report_text_names_the_decision(feature_export):
    from lowbit.verify.api import format_report

    report = verify_run(feature_export, n=8, random=8, executors=("runtime",), progress=False)
    checked = report["decisions"]["runtime"]["checked"]
    assert (
        f"integer runtime: known/unknown ({DETECTOR}) differs on 0 of {checked:,} inputs "
        f"(0 unexplained); scores equal on {checked:,}"
    ) in format_report(report)


def test_one_view_export_scores_the_image_alone(copy_export, tmp_path):
    """--ood-views 1: statistics and threshold of the crops' own features, as predict uses them."""
    export_run(copy_export, ood_score=SCORE, ood_views=1)
    description = json.loads((copy_export / "model.json").read_text())
    assert description["ood"]["views"] == 1
    _, record = load_run(copy_export)
    splits = splits_for(record)
    stats = load_export_stats(copy_export, description)
    logits, features = runtime_outputs(Runtime(copy_export / "model.int.onnx"), splits.val.x)
    scores = score(SCORE, logits, features, stats)
    assert description["ood"]["threshold"] == calibrate_threshold(scores, 0.95)
    rows = predict(copy_export, save_images(splits.val.x, tmp_path / "val"))
    assert [row["score"] for row in rows] == scores.tolist()


@pytest.mark.parametrize(("score_name", "views"), [("msp", 8), ("vim", 2), (SCORE, 3)])
def test_views_need_a_view_score_and_a_known_count(copy_export, score_name, views):
    with pytest.raises(ConfigError, match="view"):
        export_run(copy_export, ood_score=score_name, ood_views=views)


@pytest.mark.parametrize(
    ("ood", "message"),
    [
        ({"score": SCORE, "views": 3}, "ood.views: 3 views"),
        ({"score": "msp", "views": 8}, "reads one view"),
    ],
)
def test_malformed_views_in_model_json_are_refused(tmp_path, ood, message):
    from lowbit.fewshot.predict import export_views

    with pytest.raises(ModelFileError, match=message):
        export_views({"ood": ood}, tmp_path)


def test_view_scores_from_the_integer_graph_equal_the_fake_quant_ones(feature_export):
    """measure_view_scores (the runtime's codes, as `lowbit run` measures them) gives exactly
    evaluate's numbers (the fake-quant model's codes): the same integers, the same floats."""
    from lowbit.deploy import measure_view_scores
    from lowbit.train import evaluate

    model, record = load_run(feature_export)
    splits = splits_for(record)
    fake_quant = evaluate(model, splits)["ood"]
    one_view = evaluate(model, splits, views=1)["ood"]
    assert not [name for name in one_view if "@" in name]
    path = feature_export / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["ood"] = one_view
    path.write_text(json.dumps(metrics))
    measured = measure_view_scores(feature_export)["ood"]
    assert measured == fake_quant and DETECTOR in measured
    assert json.loads(path.read_text())["ood"] == measured


def test_view_scores_read_the_exports_own_training_statistics(feature_export, monkeypatch):
    """The export's statistics (fitted on the training split over the same views) stand in for
    a second pass over the training crops; any other export's are not used."""
    import lowbit.deploy as deploy
    from lowbit.fewshot import features as features_module

    description = json.loads((feature_export / "model.json").read_text())
    _, record = load_run(feature_export)
    splits = splits_for(record)
    train = len(splits.train.x)
    stats = deploy.training_stats(feature_export, description, feature_export, VIEWS, train)
    assert stats is not None and np.array_equal(
        stats["class_whitening"], load_export_stats(feature_export, description)["class_whitening"]
    )
    assert deploy.training_stats(feature_export, description, feature_export, 4, train) is None
    assert deploy.training_stats(feature_export, description, feature_export, VIEWS, 7) is None
    other_run = feature_export.parent  # the export's source_run is feature_export itself
    assert deploy.training_stats(feature_export, description, other_run, VIEWS, train) is None
    enrolled = json.loads(json.dumps(description))
    enrolled["ood"]["stats"]["fitted_on"] = "previous export + support images"
    assert deploy.training_stats(feature_export, enrolled, feature_export, VIEWS, train) is None

    path = feature_export / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["ood"] = {k: v for k, v in metrics["ood"].items() if "@" not in k}
    path.write_text(json.dumps(metrics))
    seen = []
    run_views = features_module.runtime_view_outputs
    monkeypatch.setattr(
        features_module,
        "runtime_view_outputs",
        lambda runtime, x, *a, **k: seen.append(len(x)) or run_views(runtime, x, *a, **k),
    )
    reused = deploy.measure_view_scores(feature_export, splits=splits)["ood"]
    assert sorted(seen) == sorted([len(splits.test.x), len(splits.ood.x)])  # no training pass
    path.write_text(json.dumps(metrics))
    monkeypatch.setattr(deploy, "training_stats", lambda *args: None)
    seen.clear()
    refitted = deploy.measure_view_scores(feature_export, splits=splits)["ood"]
    assert train in seen and reused == refitted and DETECTOR in reused
