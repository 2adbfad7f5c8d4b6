"""Enroll a new class into an exported model, or remove one, and verify before deploying.

`enroll_class` computes the class prototype from the *integer* features of the support images
(the runtime on the deployed model.int.onnx), appends it as a row of the source run's cosine
head (which normalizes and quantizes it per row exactly as it does trained rows), saves the
result as a run folder `enrolled/NNN` (config.json + checkpoint.pt), re-exports into a staging
folder, recalibrates the open-set threshold on the integer graph, and runs verify there. Only
a clean verify moves the new files into place as one set (lowbit.manifest.publish: model.json
first, the manifest last, each by an atomic rename); the replaced files are kept in
`enrolled/NNN/previous/`. A failed verify leaves the deployed model untouched and the staging
folder for inspection; any other failure (a full disk) removes the staging folder. The export
folder's writer lock (lowbit.lock) is held from the first read to the last rename.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

from lowbit.artifacts import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DESCRIPTION_FILE,
    MANIFEST_FILE,
    VERIFY_FILE,
    load_onnx,
    read_json,
)
from lowbit.core.feature_scores import add_class, load_export_stats
from lowbit.core.feature_scores import drop_class as drop_class_stats
from lowbit.data.preprocess import crop_rule_of
from lowbit.errors import ConfigError, ModelFileError, VerifyError, WriteError
from lowbit.fewshot.features import prototype, runtime_features, runtime_view_outputs
from lowbit.fewshot.images import load_images
from lowbit.fewshot.openset import integer_calibration
from lowbit.fewshot.predict import export_views
from lowbit.io import make_dir, named_in, writing
from lowbit.lock import writer_lock
from lowbit.manifest import publish, read_description, read_manifest, source_run_dir

log = logging.getLogger(__name__)

ENROLLED = "enrolled"  # export_dir/enrolled/NNN: one run folder per enrollment or removal
STAGING = ".enroll-staging"
RESERVED = ("unknown",)  # what `lowbit predict` prints for an open-set reject


def with_head_rows(model, weight):
    """Returns a new model: `model` with its head's weight replaced by `weight` [K', F]."""
    import dataclasses

    import torch

    from lowbit.models import build_model
    from lowbit.train.checkpoint import load_model_state, runtime_stats_state

    config = dataclasses.replace(model.config, num_classes=int(weight.shape[0]))
    new = build_model(model.recipe, config)
    state = dict(model.state_dict())
    state["head.weight"] = torch.as_tensor(weight, dtype=torch.float32)
    checkpoint = {"model": state, "quant_state": runtime_stats_state(model)}
    load_model_state(new, checkpoint, Path("<enrollment>"))
    return new.eval()


def append_class(model, row: np.ndarray):
    """Returns a copy of `model` with `row` (an unnormalized prototype) as its last head row."""
    import torch

    from lowbit.models.heads import CosineHead

    if not isinstance(model.head, CosineHead):
        raise ConfigError("enrollment needs a cosine head (train with --head cosine)")
    extra = torch.as_tensor(np.asarray(row, dtype=np.float32)).reshape(1, -1)
    return with_head_rows(model, torch.cat([model.head.weight.detach(), extra]))


def drop_class(model, index: int):
    """Returns a copy of `model` without head row `index`."""
    import torch

    weight = model.head.weight.detach()
    keep = [i for i in range(weight.shape[0]) if i != index]
    return with_head_rows(model, weight[torch.tensor(keep)])


def _save_run(model, record: dict, run_dir: Path) -> None:
    import io

    import torch

    from lowbit.io import atomic_write_bytes
    from lowbit.train.checkpoint import model_identity, runtime_stats_state
    from lowbit.train.run import write_json

    buffer = io.BytesIO()
    checkpoint = {
        "model": model.state_dict(),
        "quant_state": runtime_stats_state(model),
        "config": model_identity(model),  # load_run refuses it under another recipe
    }
    torch.save(checkpoint, buffer)
    atomic_write_bytes(run_dir / CHECKPOINT_FILE, buffer.getvalue())
    write_json(run_dir / CONFIG_FILE, record)


def _next_slot(export_dir: Path) -> str:
    existing = [p.name for p in (export_dir / ENROLLED).glob("[0-9][0-9][0-9]")]
    return f"{ENROLLED}/{max((int(n) for n in existing), default=0) + 1:03d}"


def _fixed_batch(graph: onnx.ModelProto) -> int | None:
    dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    return int(dim.dim_value) if dim.HasField("dim_value") and dim.dim_value > 0 else None


@contextmanager
def _locked_export(export_dir: Path) -> Iterator[dict]:
    """Holds the export folder's writer lock; yields its model.json, read under the lock."""
    if not export_dir.is_dir():
        read_description(export_dir)  # names the missing model.json; the lock would create it
    with writer_lock(export_dir):
        yield read_description(export_dir)


@contextmanager
def _staging_folder(export_dir: Path) -> Iterator[Path]:
    """Yields an empty staging folder in the export folder. A failed verify keeps it for
    inspection; any other failure (a full disk) removes it."""
    staging = export_dir / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # left by an earlier failed attempt
    try:
        yield staging
    except VerifyError:
        raise
    except WriteError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise named_in(error, staging, export_dir) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _deploy(staging: Path, export_dir: Path, slot: str) -> None:
    """Moves the verified change into place: the run folder, then the export set (model.json
    first, the manifest last), then verify.json; the files it replaces go to previous/."""
    run_dir = export_dir / slot
    make_dir(run_dir.parent)
    with writing(run_dir):
        os.replace(staging / slot, run_dir)
    previous = make_dir(run_dir / "previous")
    names = [*read_manifest(staging)["files"], MANIFEST_FILE, VERIFY_FILE]
    for name in names:
        if (export_dir / name).is_file():
            make_dir((previous / name).parent)
            with writing(previous / name):
                shutil.copy2(export_dir / name, previous / name)
    publish(staging, export_dir)
    with writing(export_dir / VERIFY_FILE):
        os.replace(staging / VERIFY_FILE, export_dir / VERIFY_FILE)
    shutil.rmtree(staging, ignore_errors=True)


def _rebuild(
    export_dir: Path,
    description: dict,
    model,
    record: dict,
    change: dict,
    timing: dict,
    *,
    verify_n: int,
    verify_random: int,
    progress: bool,
    refit: Callable[[dict], dict],
) -> dict:
    """Exports `model` into staging, verifies it there, then deploys it (see module docstring).

    `refit` turns the export's feature-score statistics into the changed model's (one class
    more or less); an export without statistics stays without."""
    from lowbit.export.api import export_model
    from lowbit.train.run import splits_for
    from lowbit.verify.api import build_inputs, verify_export

    with _staging_folder(export_dir) as staging:
        start = time.perf_counter()
        slot = _next_slot(export_dir)
        history = list(record.get("enrollment", [])) + [change]
        record = {**record, "class_names": change["class_names"], "enrollment": history}
        record["model"] = {**record["model"], "num_classes": len(change["class_names"])}
        make_dir(staging / slot)
        _save_run(model, record, staging / slot)
        config_path = staging / slot / CONFIG_FILE
        splits = splits_for(read_json(config_path, "config"), config_path)
        ood = description.get("ood") or {}
        stats = load_export_stats(export_dir, description)
        old_graph = load_onnx(export_dir / description["files"]["int"])
        new_description = export_model(
            model,
            staging,
            class_names=change["class_names"],
            normalization=description["input"]["normalization"],
            ood=integer_calibration(
                splits.val.x,
                ood.get("score", "msp"),
                ood.get("tpr") or 0.95,
                stats=refit(stats) if stats is not None else None,
                views=export_views(description, export_dir),
            ),
            batch=_fixed_batch(old_graph),
            source_run=slot,
            crop=crop_rule_of(description),
        )
        timing["export_s"] = time.perf_counter() - start
        start = time.perf_counter()
        inputs = build_inputs(
            new_description, splits.test.x, n=verify_n, random=verify_random, ties=True, seed=0
        )
        report = verify_export(model, staging, inputs, progress=progress)
        timing["verify_s"] = time.perf_counter() - start
        if report["unexplained"]:
            raise VerifyError(
                f"{staging}: {report['unexplained']} unexplained mismatches after the change; "
                f"{export_dir} is unchanged (staging kept for inspection)"
            )
        _deploy(staging, export_dir, slot)
        return {
            "export_dir": str(export_dir),
            "class_names": change["class_names"],
            "source_run": slot,
            "ood": new_description["ood"],
            "verify": {
                k: report[k]
                for k in ("checked_tensors", "checked_values", "mismatches", "unexplained")
            },
        }


def _load_source(export_dir: Path, description: dict):
    from lowbit.train import load_run

    run_dir = source_run_dir(export_dir, description)
    model, record = load_run(run_dir)
    if list(record["class_names"]) != list(description["class_names"]):
        raise ModelFileError(
            f"{export_dir / DESCRIPTION_FILE}: class_names differ from {run_dir / CONFIG_FILE}; "
            "re-export the run"
        )
    return model, record


def enroll_class(
    export_dir: str | Path,
    name: str,
    images: Sequence[str | Path],
    *,
    verify_n: int = 200,
    verify_random: int = 200,
    progress: bool = False,
) -> dict:
    """Adds class `name` from support images to an exported model; returns a report with timing."""
    export_dir = Path(export_dir)
    total = time.perf_counter()
    with _locked_export(export_dir) as description:
        names = list(description["class_names"])
        if not name or name in names or name in RESERVED:
            reason = "is already a class" if name in names else "is reserved or empty"
            raise ConfigError(f"--class {name!r} {reason}; classes: {', '.join(names)}")
        start = time.perf_counter()
        import lowbit.train  # noqa: F401  torch + brevitas: process start-up, timed on its own
        from lowbit.runtime import Runtime

        timing = {"import_s": time.perf_counter() - start}
        start = time.perf_counter()
        size = description["model"]["image_size"]
        x = load_images(images, size, description["input"]["normalization"])
        runtime = Runtime(export_dir / description["files"]["int"])
        support = runtime_features(runtime, x)
        row = prototype(support)  # the head classifies view 0, the image itself
        views = export_views(description, export_dir)
        # the detector's statistics read the features summed over its views (model.json "ood")
        support_views = runtime_view_outputs(runtime, x, views, first=support)[1]
        timing["features_s"] = time.perf_counter() - start
        start = time.perf_counter()
        model, record = _load_source(export_dir, description)
        model = append_class(model, row)
        timing["head_update_s"] = time.perf_counter() - start
        timing["enroll_s"] = timing["features_s"] + timing["head_update_s"]
        change = {
            "action": "enroll",
            "class": name,
            "images": len(x),
            "class_names": names + [name],
        }
        report = _rebuild(
            export_dir,
            description,
            model,
            record,
            change,
            timing,
            verify_n=verify_n,
            verify_random=verify_random,
            progress=progress,
            refit=lambda stats: add_class(stats, support_views),
        )
        timing["total_s"] = time.perf_counter() - total
        log.info("enrolled %r from %d images into %s", name, len(x), export_dir)
        return {**report, "class": name, "images": len(x), "timing": _rounded(timing)}


def remove_class(
    export_dir: str | Path,
    name: str,
    *,
    verify_n: int = 200,
    verify_random: int = 200,
    progress: bool = False,
) -> dict:
    """Removes class `name` (its head row) from an exported model; returns a report."""
    export_dir = Path(export_dir)
    total = time.perf_counter()
    with _locked_export(export_dir) as description:
        names = list(description["class_names"])
        if name not in names:
            raise ConfigError(f"--remove {name!r}: not a class of this model ({', '.join(names)})")
        if len(names) <= 2:
            raise ConfigError(f"--remove {name!r}: a classifier needs at least 2 classes")
        start = time.perf_counter()
        model, record = _load_source(export_dir, description)
        model = drop_class(model, names.index(name))
        timing = {"head_update_s": time.perf_counter() - start}
        kept = [n for n in names if n != name]
        change = {"action": "remove", "class": name, "class_names": kept}
        report = _rebuild(
            export_dir,
            description,
            model,
            record,
            change,
            timing,
            verify_n=verify_n,
            verify_random=verify_random,
            progress=progress,
            refit=lambda stats: drop_class_stats(stats, names.index(name)),
        )
        timing["total_s"] = time.perf_counter() - total
        return {**report, "class": name, "timing": _rounded(timing)}


def _rounded(timing: dict) -> dict:
    return {key: round(value, 4) for key, value in timing.items()}
