"""Defect data: the built-in generated set, MVTec AD / image-folder loaders, and splits.

`load_splits(source)` is the entry point; the rest is public for tests, tools and the CLI.
"""

from lowbit.data.dataset import Splits, load_splits, split_indices, splits_fingerprint
from lowbit.data.images import MAX_PIXELS, read_image, read_mask
from lowbit.data.loaders import Record, detect_layout, load_folder, scan
from lowbit.data.preprocess import (
    NORMALIZATION,
    box_mask,
    crop_rule,
    crop_to_mask,
    prepare_image,
    prepare_images,
    to_tensor_array,
)
from lowbit.data.sets import ArraySet, RawSet
from lowbit.data.synth import (
    BUILTIN_CLASSES,
    BUILTIN_UNKNOWN,
    generate_builtin,
    generate_sample,
    paint_defect,
    write_mvtec,
)
from lowbit.data.textures import CATEGORIES, load_texture, random_crop
from lowbit.data.whole import WholeImageSet, load_whole_images, make_whole_images

__all__ = [
    "ArraySet",
    "BUILTIN_CLASSES",
    "BUILTIN_UNKNOWN",
    "CATEGORIES",
    "MAX_PIXELS",
    "NORMALIZATION",
    "RawSet",
    "Record",
    "Splits",
    "WholeImageSet",
    "box_mask",
    "crop_rule",
    "crop_to_mask",
    "detect_layout",
    "generate_builtin",
    "generate_sample",
    "load_folder",
    "load_splits",
    "load_texture",
    "load_whole_images",
    "make_whole_images",
    "paint_defect",
    "prepare_image",
    "prepare_images",
    "random_crop",
    "read_image",
    "read_mask",
    "scan",
    "split_indices",
    "splits_fingerprint",
    "to_tensor_array",
    "write_mvtec",
]
