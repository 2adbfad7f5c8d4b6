"""Export targets: `lowbit export --target NAME[,NAME...]` maps each name to one writer.

Every target starts from the same export: lowbit.deploy first writes the three ONNX graphs and
model.json (the `onnx` target, always done), then each further writer reads that folder
(model.int.onnx, model.json) and writes its own files, atomically. `lowbit export` runs the
writers in the export's staging folder, so their files are published with the graphs as one
set (lowbit/manifest.py); run on a published export, the new files are added to its manifest,
which is rewritten last. A writer is `writer(export_dir, description) -> [written paths]`; it
imports its optional tools itself, so an unused target costs nothing. Adding a target is one
entry in `TARGETS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lowbit.artifacts import DESCRIPTION_FILE, GRAPH_FILES
from lowbit.errors import ConfigError
from lowbit.manifest import check_export, seal

Writer = Callable[[Path, dict], list[Path]]


def _onnx(export_dir: Path, description: dict) -> list[Path]:
    """The graphs and model.json that the export already wrote."""
    return [export_dir / name for name in (*GRAPH_FILES.values(), DESCRIPTION_FILE)]


def _c(export_dir: Path, description: dict) -> list[Path]:
    from lowbit.targets.c.target import write_c_target

    return write_c_target(export_dir, description)


def _finn(export_dir: Path, description: dict) -> list[Path]:
    from lowbit.targets.finn import write_finn

    return write_finn(export_dir)


def _hls4ml(export_dir: Path, description: dict) -> list[Path]:
    from lowbit.targets.hls4ml import write_hls4ml

    return write_hls4ml(export_dir)


TARGETS: dict[str, Writer] = {
    "onnx": _onnx,  # model.{qonnx,qcdq,int}.onnx + model.json
    "c": _c,  # c/lowbit_model.{h,c}: dependency-free C99 reference (c/target.py)
    "finn": _finn,  # model.finn.onnx: exact thresholds for ConvertQONNXtoFINN (finn.py)
    "hls4ml": _hls4ml,  # model.hls4ml.onnx + hls4ml_config.json (hls4ml.py)
}
DEFAULT_TARGET = "onnx"


def parse_targets(text: str | None) -> tuple[str, ...]:
    """Target names from a comma list ('c', 'onnx,c'), each known, in order, without repeats."""
    names = [part.strip() for part in (text or DEFAULT_TARGET).split(",") if part.strip()]
    unknown = [name for name in names if name not in TARGETS]
    if unknown or not names:
        raise ConfigError(
            f"--target {text!r}: unknown {', '.join(unknown) or 'empty'}; "
            f"choose from {', '.join(TARGETS)} (comma-separated)"
        )
    return tuple(dict.fromkeys(names))


def write_targets(
    targets: tuple[str, ...], export_dir: str | Path, description: dict
) -> dict[str, list[str]]:
    """Runs each target's writer on a checked export folder and lists the files they write in
    its manifest; returns {target: [written paths]}."""
    export_dir = Path(export_dir)
    manifest = check_export(export_dir)
    written = {name: [Path(p) for p in TARGETS[name](export_dir, description)] for name in targets}
    if manifest is not None:  # an export without a manifest is not given one by a part of it
        added = [
            path.relative_to(export_dir).as_posix() for paths in written.values() for path in paths
        ]
        seal(export_dir, [*manifest["files"], *added])
    return {name: [str(path) for path in paths] for name, paths in written.items()}
