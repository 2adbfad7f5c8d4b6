"""`load_splits`: the one entry point from a data source to train/val/test/OOD arrays.

Known classes are split per class (stratified) with a seeded permutation; held-out
("unknown") classes go whole to the OOD set, which no training step may see.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lowbit.data.images import read_pair
from lowbit.data.loaders import class_names_of, labels_of, scan
from lowbit.data.preprocess import DEFAULT_IMAGE_SIZE, prepare_images, to_tensor_array
from lowbit.data.sets import ArraySet
from lowbit.data.synth import BUILTIN_CLASSES, BUILTIN_UNKNOWN, DEFAULT_PER_CLASS, generate_builtin
from lowbit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BUILTIN = "builtin"


@dataclass
class Splits:
    """Train/val/test over the known classes and the OOD set of the held-out ones.

    Labels in train/val/test index `class_names`; `ood.y` is all -1 and `ood_types` indexes
    `unknown_names` for each OOD sample. `mask_crops`: the inputs are crops around each image's
    mask (lowbit.data.preprocess), not whole images; an export records it for `predict`.
    """

    train: ArraySet
    val: ArraySet
    test: ArraySet
    ood: ArraySet
    class_names: tuple[str, ...]
    unknown_names: tuple[str, ...]
    ood_types: np.ndarray
    image_size: int
    mask_crops: bool = False


def splits_fingerprint(splits) -> str:
    """Returns a sha256 hex digest of every image, label and class name of `splits`.

    config.json records it, so a run is never reused, resumed or evaluated on data other than
    its own: another lowbit version's built-in set, or a folder whose files changed.
    """
    digest = hashlib.sha256()
    names = (tuple(splits.class_names), tuple(getattr(splits, "unknown_names", ()) or ()))
    digest.update(json.dumps(names).encode())
    for part in ("train", "val", "test", "ood"):
        arrays = getattr(splits, part, None)
        for array in () if arrays is None else (arrays.x, arrays.y):
            array = np.asarray(array)
            digest.update(f"{part}:{array.dtype.str}:{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def split_indices(
    labels: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    class_names: Sequence[str] | None = None,
    where: str = "",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return sorted (train, val, test) indices, stratified per label, seeded.

    Each class gives round(n * fraction) samples to val and test, at least 1 where the fraction
    is positive, and keeps at least 1 for training.
    """
    rng = np.random.default_rng(seed)
    minimum = 1 + (val_fraction > 0) + (test_fraction > 0)
    parts: tuple[list[np.ndarray], ...] = ([], [], [])
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n = len(members)
        if n < minimum:
            name = repr(class_names[label]) if class_names is not None else str(label)
            raise DataError(
                f"class {name} {where}has {n} image(s); at least {minimum} are needed to split "
                "into train/val/test"
            )
        n_val = max(int(val_fraction > 0), round(n * val_fraction))
        n_test = max(int(test_fraction > 0), round(n * test_fraction))
        while n - n_val - n_test < 1:  # rounding up both can leave nothing to train on
            if n_val >= n_test:
                n_val -= 1
            else:
                n_test -= 1
        parts[0].append(members[n_val + n_test :])
        parts[1].append(members[:n_val])
        parts[2].append(members[n_val : n_val + n_test])
    train, val, test = (np.sort(np.concatenate(p)) if p else np.zeros(0, int) for p in parts)
    return train, val, test


def _check_options(
    image_size: int, val_fraction: float, test_fraction: float, per_class: int | None
) -> None:
    if image_size < 1:
        raise ConfigError(f"image_size must be at least 1, got {image_size}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) "
            "and sum to less than 1"
        )
    if per_class is not None and per_class < 1:
        raise ConfigError(f"per_class must be at least 1, got {per_class}")


def _parse_unknown(unknown: Sequence[str] | str | None, default: Sequence[str]) -> tuple[str, ...]:
    if unknown is None:
        return tuple(default)
    if isinstance(unknown, str):
        unknown = [name for name in unknown.split(",") if name.strip()]
    return tuple(dict.fromkeys(name.strip() for name in unknown))


def _cap_per_class(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Return sorted indices keeping at most `per_class` seeded-random samples of each label."""
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng([seed, 1])
    kept = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(kept))


@dataclass
class _Source:
    """A labelled source before any image is prepared; `pairs()` yields (image, mask)."""

    class_names: tuple[str, ...]
    labels: np.ndarray
    paths: list[str]
    pairs: Callable[[], Iterable[tuple[np.ndarray, np.ndarray | None]]]
    default_unknown: tuple[str, ...]
    where: str  # completes "class 'x' ...has 2 images"
    has_masks: bool


def _open_source(
    source: str | Path,
    seed: int,
    per_class: int | None,
    prefix_category: bool,
    exclude: tuple[str, ...] = (),
) -> _Source:
    """Opens `source` without reading (or generating) any image of the `exclude` classes."""
    if isinstance(source, str) and source == BUILTIN:
        classes = [name for name in BUILTIN_CLASSES if name not in exclude]
        raw = generate_builtin(seed, per_class or DEFAULT_PER_CLASS, classes=classes)
        return _Source(
            raw.class_names,
            raw.labels,
            raw.paths,
            lambda: zip(raw.images, raw.masks),
            BUILTIN_UNKNOWN,
            "of the built-in set ",
            has_masks=True,
        )
    records = scan(Path(source), prefix_category=prefix_category)
    records = [r for r in records if r.class_name not in exclude]
    class_names = class_names_of(records)
    kept = _cap_per_class(labels_of(records, class_names), per_class, seed)
    records = [records[i] for i in kept]
    return _Source(
        class_names,
        labels_of(records, class_names),
        [str(r.image_path) for r in records],
        lambda: (read_pair(r.image_path, r.mask_path) for r in records),
        (),
        f"in {source} ",
        has_masks=any(r.mask_path is not None for r in records),
    )


def _relabel(
    class_names: Sequence[str], known: Sequence[str], unknown: Sequence[str], labels: np.ndarray
) -> np.ndarray:
    """Return labels over `known` (0..K-1); a sample of unknown[j] gets -1 - j."""
    table = [known.index(n) if n in known else -1 - unknown.index(n) for n in class_names]
    return np.array(table, dtype=np.int64)[labels]


def load_splits(
    source: str | Path = BUILTIN,
    image_size: int = DEFAULT_IMAGE_SIZE,
    crop: bool = True,
    unknown: Sequence[str] | str | None = None,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.25,
    per_class: int | None = None,
    prefix_category: bool = False,
    exclude: Sequence[str] = (),
) -> Splits:
    """Return the seeded, stratified splits of `source` ("builtin" or a data folder).

    `unknown` names the classes held out as OOD (default: BUILTIN_UNKNOWN for "builtin", none
    for a folder; a comma-separated string is accepted). `per_class` is the number of
    generated samples per class for "builtin" (default DEFAULT_PER_CLASS, 600) and a cap for
    a folder.
    `prefix_category` names MVTec AD classes "<category>/<defect>" instead of "<defect>".
    `exclude` names classes left out altogether: none of their images is read or generated
    (leave-one-type-out validation keeps the real held-out types out of reach this way).
    """
    _check_options(image_size, val_fraction, test_fraction, per_class)
    exclude = _parse_unknown(exclude, ())
    data = _open_source(source, seed, per_class, prefix_category, exclude)
    unknown_names = _parse_unknown(unknown, data.default_unknown)
    missing = [name for name in unknown_names if name not in data.class_names]
    if missing:
        raise DataError(
            f"unknown class(es) {missing} not in {source}; available: {', '.join(data.class_names)}"
        )
    known_names = tuple(name for name in data.class_names if name not in unknown_names)
    if len(known_names) < 2:
        raise DataError(f"{source}: holding out {list(unknown_names)} leaves fewer than 2 classes")

    labels = _relabel(data.class_names, known_names, unknown_names, data.labels)
    known_index, ood = np.flatnonzero(labels >= 0), np.flatnonzero(labels < 0)
    # split before reading any image, so a class too small to split fails fast
    parts = split_indices(
        labels[known_index], val_fraction, test_fraction, seed, known_names, data.where
    )
    train, val, test = (known_index[part] for part in parts)
    x = to_tensor_array(prepare_images(data.pairs(), image_size, crop))

    def subset(index: np.ndarray, y: np.ndarray) -> ArraySet:
        return ArraySet(x[index], y.astype(np.int64), [data.paths[i] for i in index])

    splits = Splits(
        train=subset(train, labels[train]),
        val=subset(val, labels[val]),
        test=subset(test, labels[test]),
        ood=subset(ood, np.full(len(ood), -1)),
        class_names=known_names,
        unknown_names=unknown_names,
        ood_types=-1 - labels[ood],
        image_size=image_size,
        mask_crops=crop and data.has_masks,
    )
    log.info(
        "%s: %d classes, train/val/test %d/%d/%d, %d OOD samples of %s",
        source,
        len(known_names),
        len(splits.train),
        len(splits.val),
        len(splits.test),
        len(splits.ood),
        list(unknown_names),
    )
    return splits
