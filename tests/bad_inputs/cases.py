"""The bad-input corpus: each case writes its files and says how `lowbit` must refuse them.

A case's `argv` runs one CLI command on the bad file; the command must exit with `code`, print
exactly one stderr line containing `needle` (the file, node or field at fault) and leave none
of `outputs` behind. `KINDS` groups the cases for the README's table.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from lowbit.artifacts import MANIFEST_FILE
from lowbit.manifest import read_manifest, seal

from . import files
from .files import IMAGE_SIZE, ONNX_DEFECTS


@dataclass
class Env:
    """Shared, read-only ingredients: a good data folder, a trained and exported tiny run."""

    folder: Path  # image-folder layout, 3 classes x 4 images
    run: Path  # trained + exported (model.json, model.{int,qonnx,qcdq}.onnx)
    model: Path  # a good integer graph for `lowbit infer`


@dataclass
class Case:
    argv: list[str]
    code: int
    needle: str
    outputs: list[Path] = field(default_factory=list)


TRAIN = ["--image-size", str(IMAGE_SIZE), "--width", "4", "--epochs", "1", "--batch-size", "4"]
CASES: dict[str, tuple[str, Callable[[Path, Env], Case]]] = {}


def case(name: str, kind: str):
    def register(builder: Callable[[Path, Env], Case]) -> Callable[[Path, Env], Case]:
        CASES[name] = (kind, builder)
        return builder

    return register


# ----- ONNX models, through `lowbit infer MODEL x.npy --out y.npz` ---------------------------


def _infer(model: Path, tmp: Path, code: int, needle: str, env: Env, x: Path | None = None):
    if x is None:
        x = tmp / "x.npy"
        np.save(x, np.zeros((2, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32))
    out = tmp / "y.npz"
    return Case(["infer", str(model), str(x), "--out", str(out)], code, needle, [out])


def _onnx_defect(kind: str) -> Callable[[Path, Env], Case]:
    def build(tmp: Path, env: Env) -> Case:
        path = tmp / f"{kind}.onnx"
        onnx.save(files.bad_model(kind), path)
        return _infer(path, tmp, 5, ONNX_DEFECTS[kind], env)

    return build


for _kind in ONNX_DEFECTS:
    case(f"onnx_{_kind}", "ONNX model: valid protobuf, bad graph")(_onnx_defect(_kind))


@case("onnx_truncated", "ONNX model: unreadable file")
def _(tmp: Path, env: Env) -> Case:
    path = files.truncate(Path(shutil.copy(env.model, tmp / "t.onnx")))
    return _infer(path, tmp, 5, "t.onnx: not a readable ONNX model", env)


@case("onnx_random_bytes", "ONNX model: unreadable file")
def _(tmp: Path, env: Env) -> Case:
    return _infer(files.random_bytes(tmp / "r.onnx"), tmp, 5, "r.onnx", env)


@case("onnx_zero_bytes", "ONNX model: unreadable file")
def _(tmp: Path, env: Env) -> Case:
    (tmp / "z.onnx").write_bytes(b"")
    return _infer(tmp / "z.onnx", tmp, 5, "z.onnx", env)


@case("onnx_missing", "ONNX model: unreadable file")
def _(tmp: Path, env: Env) -> Case:
    return _infer(tmp / "nope.onnx", tmp, 5, "nope.onnx: no such model file", env)


# ----- runtime inputs, through `lowbit infer GOOD_MODEL bad.npy` -------------------------------


def _input_defect(needle: str, write: Callable[[Path], None]) -> Callable[[Path, Env], Case]:
    def build(tmp: Path, env: Env) -> Case:
        path = tmp / "bad.npy"
        write(path)
        return _infer(env.model, tmp, 6, needle, env, x=path)

    return build


SHAPE = (2, 3, IMAGE_SIZE, IMAGE_SIZE)


def _with(value: float) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        x = np.zeros(SHAPE, np.float32)
        x[1, 2, 3, 4] = value
        np.save(path, x)

    return write


INPUT_DEFECTS = {
    "nan": ("nan at index [1, 2, 3, 4]", _with(np.nan)),
    "inf": ("inf at index [1, 2, 3, 4]", _with(np.inf)),
    "minus_inf": ("-inf at index [1, 2, 3, 4]", _with(-np.inf)),
    "int64": ("must be float32, got int64", lambda p: np.save(p, np.zeros(SHAPE, np.int64))),
    "float64_inexact": ("is not a float32", lambda p: np.save(p, np.full(SHAPE, 0.1))),
    "shape": ("must have shape", lambda p: np.save(p, np.zeros((2, 3, 8, 8), np.float32))),
    "rank": ("must have shape", lambda p: np.save(p, np.zeros((3, 16, 16), np.float32))),
    "empty_batch": ("empty batch", lambda p: np.save(p, np.zeros((0, 3, 16, 16), np.float32))),
    "pickle_object": (
        "holds Python objects",
        lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True),
    ),
    "absurd_header": (
        "header declares shape [1000000, 3, 1000, 1000]",
        lambda p: files.write_npy_header_only(p, (1_000_000, 3, 1000, 1000)),
    ),
    "truncated": ("bad.npy: header declares", lambda p: (_with(0.0)(p), files.truncate(p))),
    "random_bytes": ("not a .npy array file", lambda p: files.random_bytes(p)),
}
for _name, (_needle, _write) in INPUT_DEFECTS.items():
    case(f"input_{_name}", "runtime input (.npy)")(_input_defect(_needle, _write))


# ----- images and data folders, through `lowbit train --data DIR` -------------------------------


def _train(data: Path, tmp: Path, needle: str, code: int = 4) -> Case:
    run = tmp / "run"
    return Case(["train", "--data", str(data), *TRAIN, "--out", str(run)], code, needle, [run])


def _folder_defect(needle: str, damage: Callable[[Path], object]) -> Callable[[Path, Env], Case]:
    def build(tmp: Path, env: Env) -> Case:
        data = Path(shutil.copytree(env.folder, tmp / "data"))
        damage(data)
        return _train(data, tmp, needle.format(data=data))

    return build


def _corrupt_image(data: Path) -> None:
    files.random_bytes(data / "hole" / "001.png", size=512)


def _empty_class(data: Path) -> None:
    (data / "dent").mkdir()


def _duplicate_class(data: Path) -> None:
    shutil.copytree(data / "hole", data / "Hole")


def _broken_link(data: Path) -> None:
    (data / "crack" / "009.png").symlink_to(data / "gone.png")


IMAGE_DEFECTS = {
    "corrupt": ("{data}/hole/001.png: cannot read image", _corrupt_image),
    "zero_bytes": ("{data}/hole/002.png", lambda d: (d / "hole" / "002.png").write_bytes(b"")),
    "truncated": ("{data}/stain/000.png", lambda d: files.truncate(d / "stain" / "000.png", 0.6)),
    "bomb_20000x20000": (  # past Pillow's own bomb limit (2 x 89.5 MP): refused at open
        "bomb.png: cannot read image (Image size (400000000 pixels) exceeds",
        lambda d: files.write_png_bomb(d / "crack" / "bomb.png"),
    ),
    "bomb_8000x8000": (  # under Pillow's limit, over lowbit's MAX_PIXELS: refused from the header
        "8000x8000 image exceeds the 40,000,000-pixel limit",
        lambda d: files.write_png_bomb(d / "crack" / "bomb.png", side=8000),
    ),
    "not_an_image": ("{data}/crack/000.png", lambda d: (d / "crack" / "000.png").write_text("hi")),
}
FOLDER_DEFECTS = {
    "empty_class_folder": ("{data}/dent has no images", _empty_class),
    "duplicate_class_names": ("'Hole' and 'hole' differ only by case", _duplicate_class),
    "broken_symlink": ("{data}/crack/009.png: broken symbolic link", _broken_link),
    "one_image_class": (
        "class 'stain'",
        lambda d: [p.unlink() for p in sorted((d / "stain").iterdir())[1:]],
    ),
    "one_class": (
        "leaves fewer than 2 classes",
        lambda d: [shutil.rmtree(d / "hole"), shutil.rmtree(d / "stain")],
    ),
}
for _name, (_needle, _damage) in IMAGE_DEFECTS.items():
    case(f"image_{_name}", "image file")(_folder_defect(_needle, _damage))
for _name, (_needle, _damage) in FOLDER_DEFECTS.items():
    case(f"folder_{_name}", "data folder")(_folder_defect(_needle, _damage))


@case("folder_missing", "data folder")
def _(tmp: Path, env: Env) -> Case:
    return _train(tmp / "nope", tmp, "nope does not exist")


@case("folder_no_subfolders", "data folder")
def _(tmp: Path, env: Env) -> Case:
    (tmp / "flat").mkdir()
    return _train(tmp / "flat", tmp, "it has no subfolders")


def _mvtec_defect(needle: str, damage: Callable[[Path], object]) -> Callable[[Path, Env], Case]:
    def build(tmp: Path, env: Env) -> Case:
        data = files.write_mvtec_category(tmp / "mvtec")
        damage(data / "part")
        return _train(data, tmp, needle)

    return build


def _small_mask(part: Path) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(part / "ground_truth/hole/001_mask.png")


case("mask_size_mismatch", "mask")(
    _mvtec_defect("ground_truth/hole/001_mask.png is 8x8", _small_mask)
)
case("mask_missing", "mask")(
    _mvtec_defect("no mask for", lambda p: (p / "ground_truth/crack/002_mask.png").unlink())
)
case("mask_corrupt", "mask")(
    _mvtec_defect(
        "003_mask.png", lambda p: files.random_bytes(p / "ground_truth/stain/003_mask.png")
    )
)


# ----- run directories and checkpoints, through `lowbit eval` / `export` / `train --resume` ---


def _run_copy(tmp: Path, env: Env) -> Path:
    run = tmp / "run"
    run.mkdir()
    for name in ("config.json", "checkpoint.pt"):
        shutil.copy(env.run / name, run / name)
    return run


def _edit_config(run: Path, edit: Callable[[dict], object]) -> None:
    record = json.loads((run / "config.json").read_text())
    edit(record)
    (run / "config.json").write_text(json.dumps(record))


def _run_defect(
    command: str, code: int, needle: str, damage: Callable[[Path], object]
) -> Callable[[Path, Env], Case]:
    def build(tmp: Path, env: Env) -> Case:
        run = _run_copy(tmp, env)
        damage(run)
        out = tmp / "export"
        argv = {
            "eval": ["eval", str(run)],
            "export": ["export", str(run), "--out", str(out)],
            "resume": ["train", "--data", str(env.folder), *TRAIN, "--out", str(run), "--resume"],
        }[command]
        return Case(argv, code, needle.format(run=run), [out, run / "metrics.json"])

    return build


def _other_version(record: dict) -> None:
    record["versions"]["lowbit"] = "9.0.0"


def _other_recipe(record: dict) -> None:
    record["recipe"].update(name="w2a2", weight_bits=2)


def _pickle_payload(run: Path) -> None:
    torch.save({"model": files.Payload(run / "PWNED")}, run / "checkpoint.pt")


RUN_DEFECTS = {
    "version_eval": (
        "eval",
        3,
        "written by lowbit 9.0.0",
        lambda r: _edit_config(r, _other_version),
    ),
    "version_resume": (
        "resume",
        3,
        "written by lowbit 9.0.0",
        lambda r: _edit_config(r, _other_version),
    ),
    "recipe_mismatch_eval": (
        "eval",
        5,
        "trained as 'w1a2', config.json asks for 'w2a2'",
        lambda r: _edit_config(r, _other_recipe),
    ),
    "recipe_mismatch_export": (
        "export",
        5,
        "{run}/checkpoint.pt: weights do not fit the model of config.json",
        lambda r: _edit_config(r, _other_recipe),
    ),
    "width_mismatch": (
        "eval",
        5,
        "model.width",
        lambda r: _edit_config(r, lambda c: c["model"].update(width=8)),
    ),
    "pickle_payload": ("eval", 5, "{run}/checkpoint.pt: cannot load checkpoint", _pickle_payload),
    "checkpoint_truncated": (
        "eval",
        5,
        "{run}/checkpoint.pt",
        lambda r: files.truncate(r / "checkpoint.pt"),
    ),
    "checkpoint_missing": (
        "export",
        5,
        "checkpoint not found",
        lambda r: (r / "checkpoint.pt").unlink(),
    ),
    "config_corrupt": (
        "eval",
        3,
        "{run}/config.json: not valid JSON",
        lambda r: files.truncate(r / "config.json"),
    ),
    "config_missing": (
        "eval",
        3,
        "{run}/config.json: not found",
        lambda r: (r / "config.json").unlink(),
    ),
}
for _name, (_command, _code, _needle, _damage) in RUN_DEFECTS.items():
    case(f"run_{_name}", "run directory / checkpoint")(
        _run_defect(_command, _code, _needle, _damage)
    )


# ----- exported models, through `lowbit verify DIR` ------------------------------------------


def _copy_export(tmp: Path, env: Env) -> Path:
    """A sealed copy of env.run's export in its own folder, its source_run pointing back."""
    export = tmp / "export"
    export.mkdir()
    names = read_manifest(env.run)["files"]
    for name in names:
        shutil.copy(env.run / name, export / name)
    description = json.loads((export / "model.json").read_text())
    description["source_run"] = str(env.run)
    (export / "model.json").write_text(json.dumps(description))
    seal(export, names)
    return export


def _export_defect(needle: str, damage: Callable[[Path], object]) -> Callable[[Path, Env], Case]:
    """Damage sealed into the manifest, as a buggy or hostile writer would: the loaders refuse."""

    def build(tmp: Path, env: Env) -> Case:
        export = _copy_export(tmp, env)
        damage(export)
        seal(export, read_manifest(export)["files"])
        argv = ["verify", str(export), "--n", "0", "--random", "4", "--no-ties"]
        return Case(argv, 5, needle, [export / "verify.json"])

    return build


def _foreign_domain_qonnx(export: Path) -> None:
    model = onnx.load(export / "model.qonnx.onnx")
    model.graph.node[0].domain = "lowbit_payload"
    onnx.save(model, export / "model.qonnx.onnx")


EXPORT_DEFECTS = {
    "model_json_corrupt": (
        "model.json: not valid JSON",
        lambda e: files.truncate(e / "model.json"),
    ),
    "model_json_not_lowbit": (
        "not a lowbit model.json",
        lambda e: (e / "model.json").write_text("[1]"),
    ),
    "int_graph_truncated": ("model.int.onnx", lambda e: files.truncate(e / "model.int.onnx")),
    "qonnx_foreign_domain": ("domain 'lowbit_payload'", _foreign_domain_qonnx),
}
for _name, (_needle, _damage) in EXPORT_DEFECTS.items():
    case(f"export_{_name}", "exported model folder")(_export_defect(_needle, _damage))


# ----- exported models changed after export: the manifest refuses them (verify and predict) --


def _altered_export(
    command: str, needle: str, damage: Callable[[Path, Env], object]
) -> Callable[[Path, Env], Case]:
    def build(tmp: Path, env: Env) -> Case:
        export = _copy_export(tmp, env)
        damage(export, env)
        if command == "verify":
            argv = ["verify", str(export), "--n", "0", "--random", "4", "--no-ties"]
            return Case(argv, 5, needle, [export / "verify.json"])
        image = sorted((env.folder / files.CLASSES[0]).iterdir())[0]
        return Case(["predict", str(export), str(image)], 5, needle)

    return build


def _swap(export: Path, first: str, second: str) -> None:
    (export / first).rename(export / "swap")
    (export / second).rename(export / first)
    (export / "swap").rename(export / second)


def _edit_threshold(export: Path) -> None:
    description = json.loads((export / "model.json").read_text())
    description["ood"]["threshold"] = -1e9  # every input "known"
    (export / "model.json").write_text(json.dumps(description))


ALTERED_EXPORTS = {
    "graph_truncated": (
        "model.int.onnx: sha256 differs from model.manifest.json",
        lambda e, env: files.truncate(e / "model.int.onnx"),
    ),
    "graphs_swapped": (
        "model.qcdq.onnx: sha256 differs from model.manifest.json",
        lambda e, env: _swap(e, "model.qcdq.onnx", "model.qonnx.onnx"),
    ),
    "graph_of_another_model": (
        "model.int.onnx: sha256 differs from model.manifest.json",
        lambda e, env: shutil.copy(env.model, e / "model.int.onnx"),
    ),
    "model_json_edited": (
        "model.json: sha256 differs from model.manifest.json",
        lambda e, env: _edit_threshold(e),
    ),
    "manifest_missing": (
        "model.manifest.json: missing although model.json names it",
        lambda e, env: (e / MANIFEST_FILE).unlink(),
    ),
    "manifest_corrupt": (
        "model.manifest.json: not valid JSON",
        lambda e, env: files.truncate(e / MANIFEST_FILE),
    ),
}
for _command in ("verify", "predict"):
    for _name, (_needle, _damage) in ALTERED_EXPORTS.items():
        case(f"altered_{_command}_{_name}", "exported model folder altered after export")(
            _altered_export(_command, _needle, _damage)
        )
