"""`fit_detector`: fit stage 1 (an integer memory bank and its thresholds) into an export.

Per category (an MVTec AD category, or a built-in texture): the defect-free train/good images
are split by `seed` into fit images (the bank) and validation images (the thresholds). The
classifier's integer trunk, cut at `layer` for the images' size, gives each image's codes;
`aggregate` sums them over k x k neighbourhoods; the bank keeps at most `bank_size` of the fit
images' patch codes (greedy coreset); each validation image's integer anomaly map is its
patches' squared distances to the bank. Both thresholds follow one rule at the same rate r
(lowbit.detect.maps.false_alarm_threshold): the smallest integer t with #(value > t) <=
floor(r * n):
- image threshold: over the n validation images' scores (a map's maximum): at most
  floor(r * n) validation images are flagged;
- pixel threshold: over every pixel of the validation maps: at most floor(r * pixels) of them
  lie in a mask. It never exceeds the image threshold (the pixels above the image threshold lie
  in at most floor(r * n) maps, at most floor(r * pixels) of them), so every flagged image has
  a non-empty mask.
Nothing here sees a defect image: thresholds come from good images only.
The fit also ships the stage-1 graphs (`stage1_graphs`): the integer graph and, when the export
has the classifier's QCDQ / QONNX graphs, their witness forms; store.py writes and records them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lowbit.artifacts import detector_files
from lowbit.data.images import read_image
from lowbit.data.loaders import scan_good
from lowbit.data.textures import CATEGORIES
from lowbit.data.whole import WHOLE_IMAGE_SIZE, generate_whole_image, whole_image_rng
from lowbit.detect.aggregate import aggregate, aggregated_range
from lowbit.detect.maps import false_alarm_threshold
from lowbit.detect.memory_bank import anomaly_map, fit_memory_bank, image_scores
from lowbit.detect.store import DETECTOR_FORMAT, trunk_fingerprint, write_detector
from lowbit.detect.trunk import cut_trunk, trunk_code_range
from lowbit.errors import ConfigError, DataError, ModelFileError
from lowbit.fewshot.images import normalize
from lowbit.lock import writer_lock
from lowbit.manifest import read_description

log = logging.getLogger(__name__)

DEFAULT_LAYER = "backbone.blocks.2.act"  # best of benchmarks/stage1_probe.py, with k = 3
DEFAULT_AGGREGATE = 3
DEFAULT_BANK_SIZE = 2000  # 8,000 entries changed image AUROC by < 0.01 in the probe
DEFAULT_FALSE_ALARM_RATE = 0.01
VALIDATION_FRACTION = 0.2
BUILTIN_TRAIN_GOOD = 200  # lowbit.data.whole.DEFAULT_TRAIN_GOOD
BATCH = 16
THRESHOLD_RULE = "smallest integer t with #(value > t) <= floor(false_alarm_rate * n)"


def load_trunk(export_dir: Path, description: dict, layer: str, height: int, width: int):
    """Returns the classifier's trunk cut at `layer` for height x width inputs."""
    from lowbit.artifacts import load_onnx

    model = load_onnx(Path(export_dir) / description["files"]["int"])
    return cut_trunk(model, [layer], height, width)


def stage1_graphs(
    export_dir: Path, description: dict, layer: str, k: int, bank: np.ndarray, size: tuple
) -> tuple[dict, dict[str, str]]:
    """Returns ({kind: stage-1 graph}, {kind: why it is missing}): the integer graph
    (`detector_graph`), and the QCDQ / QONNX witness forms of the classifier graphs the export
    has (`witness_detector`; one whose float tail would not be exact is left out, with why)."""
    from lowbit.artifacts import load_onnx
    from lowbit.detect.float_graphs import witness_detector
    from lowbit.detect.graph import detector_graph

    int_graph = load_onnx(Path(export_dir) / description["files"]["int"])
    graphs = {"int": detector_graph(int_graph, layer, k, bank, *size)}
    missing = {}
    for kind in ("qcdq", "qonnx"):
        name = description["files"].get(kind)
        if name is None or not (Path(export_dir) / name).is_file():
            missing[kind] = "the export has no classifier graph of this kind"
            continue
        try:
            witness = load_onnx(Path(export_dir) / name)
            graphs[kind] = witness_detector(witness, int_graph, layer, k, bank, *size)
        except ModelFileError as error:
            missing[kind] = str(error)
    return graphs, missing


def whole_image_codes(
    runtime, layer: str, images: np.ndarray, normalization: dict | None, k: int
) -> np.ndarray:
    """Returns int64 [N, C, h, w]: the trunk's codes at `layer` of uint8 [N, H, W, 3] images,
    summed over k x k neighbourhoods (lowbit.detect.maps.aggregate)."""
    parts = []
    for start in range(0, len(images), BATCH):
        x = normalize(images[start : start + BATCH], normalization)
        parts.append(aggregate(runtime.run(x)[layer], k))
    return np.concatenate(parts)


def builtin_good_images(texture: str, count: int, size: int, seed: int) -> list[np.ndarray]:
    """Returns train/good images 0..count-1 of the built-in whole-image set, as
    make_whole_images(seed=seed, size=size) writes them (generated in memory)."""
    if texture not in CATEGORIES:
        raise ConfigError(
            f"--category {texture!r}: not a built-in texture; choose from {CATEGORIES}"
        )
    rngs = [whole_image_rng(seed, texture, "train/good", k) for k in range(count)]
    return [generate_whole_image(rng, texture, None, size)[0] for rng in rngs]


def folder_good_images(category_dir: Path, limit: int | None) -> tuple[list[np.ndarray], list[str]]:
    """Returns the train/good images of an MVTec AD category folder (sorted by name, the first
    `limit`) with their paths; DataError names a missing folder or an image of another size."""
    paths = scan_good(category_dir, "train")[:limit]
    images = [read_image(path) for path in paths]
    for path, image in zip(paths, images):
        if image.shape != images[0].shape:
            raise DataError(
                f"{path}: {image.shape[1]}x{image.shape[0]}, but {paths[0].name} is "
                f"{images[0].shape[1]}x{images[0].shape[0]}: one detector takes one image size"
            )
    return images, [str(path) for path in paths]


def images_fingerprint(images: Sequence[np.ndarray]) -> str:
    """Returns the sha256 of the images' shapes and pixels, in order."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(str(image.shape).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def split_good(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns sorted (fit, validation) indices of `count` images: round(fraction * count)
    validation images (at least 1) drawn by default_rng(seed).permutation."""
    validation = max(1, round(fraction * count))
    if count - validation < 1:
        raise DataError(f"{count} defect-free image(s): need at least 2 (fit and validation)")
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[validation:]), np.sort(order[:validation])


def fit_detector(
    export_dir: str | Path,
    data: str | Path | None = None,
    *,
    category: str | None = None,
    layer: str = DEFAULT_LAYER,
    aggregate_size: int = DEFAULT_AGGREGATE,
    bank_size: int = DEFAULT_BANK_SIZE,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    validation_fraction: float = VALIDATION_FRACTION,
    train_good: int | None = None,
    image_size: int = WHOLE_IMAGE_SIZE,
    seed: int = 0,
) -> dict:
    """Fits one category's detector into the export folder; returns its detector JSON.

    `data`: an MVTec AD category folder (or a root holding `category`), whose train/good images
    are read (the first `train_good` by name); None: the built-in texture `category`, its
    `train_good` (default 200) images of image_size px generated with `seed`. `seed` also draws
    the fit/validation split.
    """
    export_dir = Path(export_dir)
    if not 0 <= false_alarm_rate < 1 or not 0 < validation_fraction < 1 or bank_size < 1:
        raise ConfigError(
            "need 0 <= false_alarm_rate < 1, 0 < validation_fraction < 1 and bank_size >= 1"
        )
    if aggregate_size < 1 or aggregate_size % 2 == 0:
        raise ConfigError(f"--aggregate {aggregate_size}: an odd window size >= 1")
    if data is None:
        if category is None:
            raise ConfigError(f"give --data DIR or a built-in texture as --category {CATEGORIES}")
        images = builtin_good_images(category, train_good or BUILTIN_TRAIN_GOOD, image_size, seed)
        source = {"kind": "builtin", "texture": category, "seed": seed, "size": image_size}
    else:
        folder = Path(data)
        if category is not None and (folder / category).is_dir():
            folder = folder / category
        category = category or folder.name
        images, _ = folder_good_images(folder, train_good)
        source = {"kind": "folder", "path": str(folder)}
    detector_files(category)  # a plain file name, checked before the work
    source["fingerprint"] = images_fingerprint(images)
    source["train_good"] = len(images)
    fit_index, validation_index = split_good(len(images), validation_fraction, seed)

    if not export_dir.is_dir():
        read_description(export_dir)  # names the missing folder; the lock would create it
    with writer_lock(export_dir):
        description = read_description(export_dir)
        height, width = images[0].shape[:2]
        trunk = load_trunk(export_dir, description, layer, height, width)
        from lowbit.runtime import Runtime

        code_range = aggregated_range(trunk_code_range(trunk, layer), aggregate_size)
        stack = np.stack(images)
        normalization = description["input"].get("normalization") or None
        runtime = Runtime(trunk)
        log.info("trunk codes of %d good images at %s", len(stack), layer)
        fit_codes = whole_image_codes(
            runtime, layer, stack[fit_index], normalization, aggregate_size
        )
        bank = fit_memory_bank(fit_codes, bank_size, code_range)
        validation_codes = whole_image_codes(
            runtime, layer, stack[validation_index], normalization, aggregate_size
        )
        maps = anomaly_map(bank, validation_codes, code_range)
        scores = image_scores(maps)
        image_threshold = false_alarm_threshold(scores, false_alarm_rate)
        pixel_threshold = false_alarm_threshold(maps, false_alarm_rate)
        assert pixel_threshold <= image_threshold, (pixel_threshold, image_threshold)
        detector = {
            "format_version": DETECTOR_FORMAT,
            "category": category,
            "layer": layer,
            "aggregate": aggregate_size,
            "image_size": [height, width],
            "map_size": list(maps.shape[1:]),
            "code_range": list(code_range),
            "bank_size": len(bank),
            "bank_limit": bank_size,
            "image_threshold": image_threshold,
            "pixel_threshold": pixel_threshold,
            "false_alarm_rate": false_alarm_rate,
            "threshold_rule": THRESHOLD_RULE,
            "fit_images": len(fit_index),
            "validation_images": len(validation_index),
            "validation_flagged": int((scores > image_threshold).sum()),
            "validation_score_max": int(scores.max()),
            "seed": seed,
            "data": source,
            "trunk_sha256": trunk_fingerprint(trunk),
        }
        graphs, missing = stage1_graphs(
            export_dir, description, layer, aggregate_size, bank, (height, width)
        )
        if missing:
            detector["graphs_missing"] = missing
        detector = write_detector(export_dir, detector, bank, graphs)
    log.info("%s: image threshold %d, pixel %d", category, image_threshold, pixel_threshold)
    return detector
