"""The manifest of an export: which files belong together, checked by every reader of the folder.

`model.manifest.json` lists each file of one export (the three graphs, model.json, the feature
statistics, the files of `--target` hand-offs) by its path relative to the export folder, with
its size and sha256, and the lowbit version that wrote them:

    {"format_version": 1, "lowbit_version": "0.1.0",
     "files": {"model.int.onnx": {"size": 48211, "sha256": "9f2c..."}, "model.json": ...}}

Publishing (`staged`): the files are written into a staging folder inside the destination (one
file system, so every move is one rename) and sealed with the manifest; only a complete staging
folder is moved into place, file by file: model.json first, the manifest last. The destination
is often a run directory that also holds config.json and checkpoint.pt, so the set moves in by
renames of its own files, not of a folder. From the first rename to the last, the folder's
model.json differs from what the old manifest lists, or names a manifest that is not there yet,
and readers refuse the folder: a reader sees the old export whole, the new one whole, or a
refusal, never a mix of two. A failure before the first rename leaves the old export untouched.

Reading (`check_export`; `read_description` checks, then reads model.json): every listed file
must be there with its size and sha256; a folder whose manifest is missing although its
model.json names one is an incomplete export. A model.json that names no manifest, with none
beside it, was written by a lowbit without manifests: it is read with a warning (each of its
files was written atomically, the set is unchecked); exporting again adds the manifest.
Single-file consumers (onnxruntime, qonnx, FINN on one graph file) do not read the manifest.
This module imports no torch: predict and infer check exports where only numpy and onnx are
installed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import lowbit
from lowbit.artifacts import DESCRIPTION_FILE, MANIFEST_FILE, read_json
from lowbit.errors import ModelFileError, WriteError
from lowbit.io import (
    STAGING_PREFIX,
    atomic_write_json,
    fsync_dir,
    make_dir,
    named_in,
    writing,
)

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1


def file_entry(path: Path) -> dict:
    """Returns {"size", "sha256"} of the file at `path`."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def seal(folder: str | os.PathLike, names: Iterable[str]) -> dict:
    """Writes folder's manifest listing `names` (paths relative to `folder`); returns it."""
    folder = Path(folder)
    files = {name: file_entry(folder / name) for name in sorted(set(names))}
    manifest = {
        "format_version": MANIFEST_VERSION,
        "lowbit_version": lowbit.__version__,
        "files": files,
    }
    atomic_write_json(folder / MANIFEST_FILE, manifest)
    return manifest


def _is_member_name(name: object) -> bool:
    if not isinstance(name, str) or name in ("", ".", MANIFEST_FILE) or "\\" in name:
        return False
    path = PurePosixPath(name)
    return not path.is_absolute() and ".." not in path.parts


def _is_entry(entry: object) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("size"), int)
        and isinstance(entry.get("sha256"), str)
    )


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """Returns folder's manifest, None when there is none; ModelFileError when it is malformed."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path}: not valid JSON ({error}); export again") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or DESCRIPTION_FILE not in files:
        raise ModelFileError(
            f"{path}: not a lowbit export manifest (no files with {DESCRIPTION_FILE})"
        )
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise ModelFileError(
            f"{path}: format_version {manifest.get('format_version')!r}, this lowbit reads "
            f"{MANIFEST_VERSION}; use the lowbit that wrote it ({manifest.get('lowbit_version')})"
        )
    for name, entry in files.items():
        if not _is_member_name(name) or not _is_entry(entry):
            raise ModelFileError(f"{path}: bad entry {name!r}: a relative path, size and sha256")
    return manifest


def _names_manifest(description_path: Path) -> bool:
    """True when model.json says its export has a manifest (an unreadable one says nothing:
    its reader reports it)."""
    try:
        description = json.loads(description_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(description, dict) and "manifest" in description


def check_export(folder: str | os.PathLike) -> dict | None:
    """Returns an export folder's manifest after checking every file it lists; None (with a
    warning) for an export written before manifests. ModelFileError names the first file that
    is missing or differs: the folder holds a partial, altered or mixed export."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    description = folder / DESCRIPTION_FILE
    if manifest is None:
        if _names_manifest(description):
            raise ModelFileError(
                f"{folder / MANIFEST_FILE}: missing although {DESCRIPTION_FILE} names it: the "
                "export is incomplete (interrupted while it was written?); export again"
            )
        if description.is_file():
            log.warning(
                "%s: no %s (written by an older lowbit): its files are not checked as a set; "
                "export again to add one",
                folder,
                MANIFEST_FILE,
            )
        return None
    for name, listed in manifest["files"].items():
        path = folder / name
        try:
            found = file_entry(path)
        except OSError as error:
            raise ModelFileError(
                f"{path}: cannot read ({error.strerror}); {MANIFEST_FILE} lists it: the export "
                "is incomplete; export again"
            ) from None
        if found != {"size": listed["size"], "sha256": listed["sha256"]}:
            size = (
                f" ({found['size']} bytes, listed {listed['size']})"
                if found["size"] != listed["size"]
                else ""
            )
            raise ModelFileError(
                f"{path}: sha256 differs from {MANIFEST_FILE}{size}: truncated, replaced or "
                "edited after export, or an incomplete export; export again"
            )
    return manifest


def read_description(export_dir: str | os.PathLike) -> dict:
    """Returns model.json of an export folder whose files match its manifest; ModelFileError
    names the file when the folder, model.json or one of its fields is missing or bad."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise ModelFileError(
            f"{export_dir}: not a folder; pass an export folder ({DESCRIPTION_FILE})"
        )
    check_export(export_dir)
    return read_json(export_dir / DESCRIPTION_FILE, "model")


def source_run_dir(export_dir: str | os.PathLike, description: dict) -> Path:
    """Returns the run folder an export came from: model.json's source_run (relative to the
    export folder; "." when the export lives in the run folder), resolved."""
    return (Path(export_dir) / description.get("source_run", ".")).resolve()


def _new_staging(destination: Path) -> Path:
    with writing(destination):
        while True:
            path = destination / f"{STAGING_PREFIX}{secrets.token_hex(4)}"
            try:
                path.mkdir()  # mode from the umask, like the folders it will create
                return path
            except FileExistsError:
                continue


def publish(staging: Path, destination: Path) -> list[Path]:
    """Moves the set sealed in `staging` into `destination`: model.json first, the manifest
    last (see the module docstring); returns the published paths."""
    manifest = read_manifest(staging)
    if manifest is None:
        raise AssertionError(f"{staging}: publish needs a sealed staging folder")
    names = sorted(manifest["files"], key=lambda name: name != DESCRIPTION_FILE)
    paths = []
    for name in [*names, MANIFEST_FILE]:
        target = destination / name
        if name == MANIFEST_FILE:  # the set's files reach the disk before the manifest does
            for parent in {path.parent for path in paths}:
                fsync_dir(parent)
        make_dir(target.parent)
        with writing(target):
            os.replace(staging / name, target)
        paths.append(target)
    fsync_dir(destination)
    return paths


@contextmanager
def staged(destination: str | os.PathLike) -> Iterator[Path]:
    """Yields a new staging folder inside `destination` (created if needed); the block writes
    the set there and seals it. Leaving the block without an error publishes the set; the
    staging folder is removed either way, so a failed write leaves the old export as it was."""
    destination = make_dir(destination)
    staging = _new_staging(destination)
    try:
        yield staging
        publish(staging, destination)
    except WriteError as error:
        raise named_in(error, staging, destination) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
