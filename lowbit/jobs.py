"""The main job (`lowbit run`): pre-train fp32, QAT w1a2, export, verify, in one run folder.

`lowbit run --inspect TEXTURE` adds stage 1 end to end (`inspect_job`): after the export, a
detector for one built-in texture is fitted into it (verify then covers it too), and `inspect`
runs on that texture's built-in test images (good, the known types and the held-out ones).

The orchestration layer above the stages: it may import any stage, which no stage may do
(DESIGN.md data flow). Its steps are the stages' own workflows (lowbit.train.reuse,
lowbit.deploy, lowbit.verify.run). It returns its result as data and prints nothing: the CLI
words it (lowbit/report_text.py) or prints it as JSON.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from lowbit.artifacts import deployed_bits_of
from lowbit.deploy import export_run, measure_view_scores
from lowbit.train.reuse import train_or_reuse
from lowbit.verify.run import verify_run

# Epochs chosen so that `lowbit run` finishes in about 5 minutes on 2 CPU cores.
FP32_EPOCHS = 15
QAT_EPOCHS = 15
MAIN_JOB_QAT_RUN = "w1a2"  # the main job's quantized run folder under its --out


def run_main_job(
    out: Path, *, quick: bool = False, progress: bool = True, inspect_texture: str | None = None
) -> dict:
    """Trains fp32 then w1a2 (conv4, cosine, LogitNorm), exports, verifies; returns both runs'
    metrics, the deployed size and verify's counts (the full verify report is
    <out>/w1a2/verify.json). `inspect_texture`: also fit, verify and run stage 1 on that
    built-in texture (`inspect_job`; its result under "inspect")."""
    from lowbit.train import TrainConfig
    from lowbit.train.loop import load_data

    fp32_epochs, qat_epochs = (1, 1) if quick else (FP32_EPOCHS, QAT_EPOCHS)
    common = dict(backbone="conv4", head="cosine", loss="logitnorm", seed=0, data="builtin")
    if quick:
        common.update(width=16, per_class=120)
    fp32_dir, qat_dir = out / "fp32", out / MAIN_JOB_QAT_RUN
    fp32_config = TrainConfig(recipe="fp32", epochs=fp32_epochs, **common)
    qat_config = TrainConfig(recipe="w1a2", epochs=qat_epochs, init=str(fp32_dir), **common)
    splits = load_data(fp32_config.resolved())  # both runs' data, built once for every step
    # the view scores: fp32's are not shown; w1a2's are measured on its export's integer graph,
    # exactly as the fake-quant model would give them, in a fraction of the time
    fp32 = train_or_reuse(fp32_config, fp32_dir, progress, splits=splits, ood_views=1)
    qat = train_or_reuse(qat_config, qat_dir, progress, splits=splits, ood_views=1)
    _, description = export_run(qat_dir, splits=splits)
    qat = measure_view_scores(qat_dir, splits=splits)
    fitted = None
    if inspect_texture is not None:
        from lowbit.detect.fit import fit_detector

        started = time.perf_counter()
        options = QUICK_DETECTOR if quick else {}
        fit_detector(qat_dir, category=inspect_texture, **options)
        fitted = time.perf_counter() - started
    report = verify_run(
        qat_dir,
        splits=splits,
        n=200 if quick else 1000,
        random=64 if quick else 1000,
        progress=progress,
        detector_images=4 if quick else 8,
        detector_random=2 if quick else 4,
    )
    inspected = None
    if inspect_texture is not None:
        inspected = inspect_job(qat_dir, inspect_texture, quick=quick)
        inspected["fit_seconds"] = fitted
        inspected["verify_seconds"] = report["detector"][inspect_texture]["seconds"]
        inspected["verify_unexplained"] = report["detector"][inspect_texture]["unexplained"]
        inspected["added_seconds"] = (
            fitted + inspected["verify_seconds"] + inspected["inspect_seconds"]
        )
    return {
        "out": str(out),
        "epochs": {"fp32": fp32_epochs, "w1a2": qat_epochs},
        "fp32": fp32,
        "w1a2": qat,
        "deployed_bits": deployed_bits_of(description)["total"],
        "verify": {
            k: report[k] for k in ("checked_tensors", "checked_values", "mismatches", "unexplained")
        },
        **({"inspect": inspected} if inspected is not None else {}),
    }


# --quick: a detector and test set small enough for a smoke test (64 px, 30 good images)
QUICK_DETECTOR = {"train_good": 30, "image_size": 64, "bank_size": 500}
QUICK_TEST = {"good": 6, "per_type": 2}
TEST = {"good": 20, "per_type": 10}  # lowbit.data.whole's DEFAULT_TEST_GOOD / _PER_DEFECT


def builtin_test_images(texture: str, size: int, seed: int, good: int, per_type: int):
    """Returns (uint8 images, their types) of a built-in texture's test set, generated as
    make_whole_images(seed, size) writes test/good and test/<type> for every built-in type."""
    from lowbit.data import BUILTIN_CLASSES
    from lowbit.data.whole import generate_whole_image, whole_image_rng

    images, types = [], []
    for defect, count in ((None, good), *((d, per_type) for d in BUILTIN_CLASSES)):
        folder = f"test/{defect or 'good'}"
        for index in range(count):
            rng = whole_image_rng(seed, texture, folder, index)
            images.append(generate_whole_image(rng, texture, defect, size)[0])
            types.append(defect or "good")
    return images, np.array(types)


def inspect_job(export_dir: Path, texture: str, *, quick: bool = False) -> dict:
    """Runs `inspect` part by part on a built-in texture's test images with the detector fitted
    into the export; returns image AUROC (good vs defective: all, known types, held-out types),
    false alarms on test good, the share of defective parts flagged, the type accuracy on
    flagged known-type parts, and the mean time per good and per defective part."""
    from lowbit.core.scores import auroc
    from lowbit.detect.inspect import Inspector
    from lowbit.manifest import read_description

    inspector = Inspector(export_dir, texture)
    size = inspector.detector["image_size"][0]
    seed = inspector.detector["data"].get("seed", 0)  # a folder's detector: seed 0's images
    counts = QUICK_TEST if quick else TEST
    images, types = builtin_test_images(texture, size, seed, **counts)
    known_types = read_description(export_dir)["class_names"]
    rows, seconds = [], []
    started = time.perf_counter()
    for image in images:  # one part at a time, as parts come off a line
        begin = time.perf_counter()
        rows += inspector.run([image])
        seconds.append(time.perf_counter() - begin)
    total = time.perf_counter() - started
    seconds = np.array(seconds)
    scores = np.array([row["score"] for row in rows])
    flagged = np.array([row["anomalous"] for row in rows])
    labels = np.array([row["type"] or "" for row in rows])
    good = types == "good"
    known = np.isin(types, known_types)
    held_out = ~good & ~known
    known_flagged = known & flagged
    result = {
        "texture": texture,
        "test_images": {
            "good": int(good.sum()),
            "known": int(known.sum()),
            "held_out": int(held_out.sum()),
        },
        "inspect_seconds": total,
        "false_alarms_test_good": int(flagged[good].sum()),
        "flagged_defective": float(flagged[~good].mean()),
        "flagged_known": float(flagged[known].mean()),
        "flagged_held_out": float(flagged[held_out].mean()) if held_out.any() else None,
        "type_accuracy_flagged_known": float((labels == types)[known_flagged].mean())
        if known_flagged.any()
        else None,
        "ms_per_good_part": 1000 * float(seconds[good].mean()),
        "ms_per_defective_part": 1000 * float(seconds[~good].mean()),
    }
    for name, members in (("", ~good), ("_known", known), ("_held_out", held_out)):
        # higher score = more anomalous; auroc reads higher as in-distribution
        result[f"image_auroc{name}"] = (
            auroc(-scores[good], -scores[members]) if members.any() else None
        )
    return result
