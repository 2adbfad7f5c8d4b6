"""Unknown-type scores on a backbone's feature codes: fitted statistics and the score functions.

Every score follows lowbit's OOD convention, higher = more like the known classes. The inputs are
the exact integer feature codes of the integer graph (`backbone.features`), so the fake-quant
model and every integer executor feed these functions the same int64 array; an fp32 backbone's
float features work the same way. Features are L2-normalized first (z = f / |f|).

- `prototype`: max_c cos(z, p_c) with p_c the normalized mean of class c's normalized
  training features: the imprinted-weight score of Qi et al. 2018, one prototype per class.
- `mahalanobis`: -min_c (z - mu_c)^T S^+ (z - mu_c), class means and one shared covariance S
  (Lee et al. 2018).
- `rel_mahalanobis`: -min_c [MD_c(z) - MD_0(z)] with MD_0 the distance to the mean of all
  training features under their own covariance (Ren et al. 2021, "A Simple Fix to Mahalanobis
  Distance for Improving Near-OOD Detection", eq. 3): subtracting the class-agnostic distance
  removes the directions in which every known type varies alike.

- `residual`: -|z - P z| with P the projection onto the principal subspace of the training
  features that holds PRINCIPAL_ENERGY of their variance around their mean (Ndiour et al.
  2020; the residual half of ViM): what the known types never vary along.
- `vim`: energy(logits) - alpha |z - P z|, alpha = mean max logit / mean residual over the
  training split (Wang et al. 2022, "ViM: Out-Of-Distribution with Virtual-logit Matching",
  eq. 5-7, with the log-sum-exp of the virtual logit simplified to this difference as the
  paper's own code does for ranking).

Statistics are float64 arrays (`fit_feature_stats`), stored in the export beside the graphs and
versioned (`STATS_VERSION`). A covariance is inverted through its eigendecomposition: directions
with an eigenvalue below `EIGEN_CUTOFF` times the largest are dropped (a dead feature channel
has zero variance), so S^+ is a pseudo-inverse factored as W^T W and every distance is a squared
norm ||W z - W mu||^2, never negative.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from lowbit.artifacts import DESCRIPTION_FILE, STATS_FILE
from lowbit.core.logit_scores import energy

STATS_VERSION = 1
FEATURE_TENSOR = "backbone.features"  # the integer graph's feature codes (lowbit/export/lower.py)
FEATURE_SCORES = ("prototype", "mahalanobis", "rel_mahalanobis", "residual", "vim")
PRINCIPAL_ENERGY = 0.9  # ViM keeps the top principal directions; this fraction fixes how many
EIGEN_CUTOFF = 1e-9  # relative to the largest eigenvalue; float64 eigh error is ~1e-16 of it


def normalize_rows(features: np.ndarray) -> np.ndarray:
    """Returns float64 rows of unit L2 norm; an all-zero row stays zero."""
    features = np.asarray(features, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", features, features))[:, None]
    return features / np.where(norms > 0, norms, 1.0)


def whitening(covariance: np.ndarray) -> np.ndarray:
    """Returns W [r, F] with W^T W = pseudo-inverse of the symmetric PSD `covariance`."""
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    keep = eigenvalues > EIGEN_CUTOFF * max(float(eigenvalues[-1]), np.finfo(np.float64).tiny)
    return (eigenvectors[:, keep] / np.sqrt(eigenvalues[keep])).T


def principal_complement(centered: np.ndarray) -> np.ndarray:
    """Returns an orthonormal basis [r, F] of the directions outside the principal subspace
    that holds PRINCIPAL_ENERGY of the variance of the rows of `centered`."""
    eigenvalues, eigenvectors = np.linalg.eigh(centered.T @ centered)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = np.clip(eigenvalues[order], 0, None), eigenvectors[:, order]
    share = np.cumsum(eigenvalues) / max(float(eigenvalues.sum()), np.finfo(np.float64).tiny)
    kept = int(np.searchsorted(share, PRINCIPAL_ENERGY) + 1)
    return eigenvectors[:, kept:].T


def fit_feature_stats(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    logits: np.ndarray | None = None,
) -> dict:
    """Returns the float64 statistics of every feature score, fitted on training features
    (and, for `vim`'s alpha, their logits; without them alpha is 1)."""
    z = normalize_rows(features)
    labels = np.asarray(labels, dtype=np.int64)
    present = [c for c in range(num_classes) if np.any(labels == c)]
    if len(present) != num_classes:
        missing = sorted(set(range(num_classes)) - set(present))
        raise ValueError(f"feature statistics need samples of every class; none of {missing}")
    means = np.stack([z[labels == c].mean(axis=0) for c in range(num_classes)])
    centered = z - means[labels]
    shared = centered.T @ centered / len(z)
    global_mean = z.mean(axis=0)
    centered_all = z - global_mean
    background = centered_all.T @ centered_all / len(z)
    class_whitening = whitening(shared)
    background_whitening = whitening(background)
    complement = principal_complement(centered_all)
    residual = np.linalg.norm((z - global_mean) @ complement.T, axis=1)
    alpha = 1.0
    if logits is not None and residual.mean() > 0:
        alpha = float(np.asarray(logits, np.float64).max(axis=1).mean() / residual.mean())
    return {
        "version": np.array(STATS_VERSION),
        "prototypes": normalize_rows(means),
        "class_whitening": class_whitening,
        "class_means_white": means @ class_whitening.T,
        "background_whitening": background_whitening,
        "background_mean_white": global_mean @ background_whitening.T,
        "global_mean": global_mean,
        "principal_complement": complement,
        "vim_alpha": np.array(alpha),
    }


def _squared_distances(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Returns [N, C] squared Euclidean distances, each a sum of squares (never negative)."""
    difference = points[:, None, :] - centers[None, :, :]
    return np.einsum("ncr,ncr->nc", difference, difference)


def class_distances(features: np.ndarray, stats: dict) -> np.ndarray:
    """Returns [N, K] Mahalanobis distances MD_c(z) under the shared covariance."""
    white = normalize_rows(features) @ stats["class_whitening"].T
    return _squared_distances(white, stats["class_means_white"])


def background_distance(features: np.ndarray, stats: dict) -> np.ndarray:
    """Returns [N] Mahalanobis distances MD_0(z) to the mean of all training features."""
    white = normalize_rows(features) @ stats["background_whitening"].T
    return _squared_distances(white, stats["background_mean_white"][None, :])[:, 0]


def prototype_score(features: np.ndarray, stats: dict) -> np.ndarray:
    return (normalize_rows(features) @ stats["prototypes"].T).max(axis=1)


def mahalanobis_score(features: np.ndarray, stats: dict) -> np.ndarray:
    return -class_distances(features, stats).min(axis=1)


def rel_mahalanobis_score(features: np.ndarray, stats: dict) -> np.ndarray:
    relative = class_distances(features, stats) - background_distance(features, stats)[:, None]
    return -relative.min(axis=1)


def residual_norm(features: np.ndarray, stats: dict) -> np.ndarray:
    """Returns |z - P z|: the norm of the centered feature outside the principal subspace."""
    offset = normalize_rows(features) - stats["global_mean"]
    return np.linalg.norm(offset @ stats["principal_complement"].T, axis=1)


def residual_score(features: np.ndarray, stats: dict) -> np.ndarray:
    return -residual_norm(features, stats)


SCORE_FUNCTIONS: dict[str, Callable[[np.ndarray, dict], np.ndarray]] = {
    "prototype": prototype_score,
    "mahalanobis": mahalanobis_score,
    "rel_mahalanobis": rel_mahalanobis_score,
    "residual": residual_score,
}


def feature_score(
    features: np.ndarray, stats: dict, name: str, logits: np.ndarray | None = None
) -> np.ndarray:
    """Returns the float64 score `name` (higher = more known) of each feature row."""
    if name == "vim":
        if logits is None:
            raise ValueError("score 'vim' needs the logits too")
        return energy(logits) - float(stats["vim_alpha"]) * residual_norm(features, stats)
    if name not in SCORE_FUNCTIONS:
        raise ValueError(f"unknown feature score {name!r}: choose from {', '.join(FEATURE_SCORES)}")
    return SCORE_FUNCTIONS[name](features, stats)


def add_class(stats: dict, features: np.ndarray) -> dict:
    """Returns stats with one more class whose mean is that of `features` (its support images).

    A few support images cannot estimate a covariance: the new class shares the fitted
    within-class covariance, and the background statistics stay those of the training split.
    """
    mean = normalize_rows(features).mean(axis=0)
    return {
        **stats,
        "prototypes": np.vstack([stats["prototypes"], normalize_rows(mean[None, :])]),
        "class_means_white": np.vstack(
            [stats["class_means_white"], (mean @ stats["class_whitening"].T)[None, :]]
        ),
    }


def drop_class(stats: dict, index: int) -> dict:
    """Returns stats without class `index`."""
    return {
        **stats,
        "prototypes": np.delete(stats["prototypes"], index, axis=0),
        "class_means_white": np.delete(stats["class_means_white"], index, axis=0),
    }


STATS_ARRAYS = (
    "version",
    "prototypes",
    "class_whitening",
    "class_means_white",
    "background_whitening",
    "background_mean_white",
    "global_mean",
    "principal_complement",
    "vim_alpha",
)


def stats_to_bytes(stats: dict) -> bytes:
    """Returns the .npz bytes of fitted statistics (float64 arrays, no pickled objects)."""
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(stats[name]) for name in STATS_ARRAYS})
    return buffer.getvalue()


def stats_from_bytes(blob: bytes, where: str) -> dict:
    """Returns statistics read from .npz bytes; ValueError (naming `where`) when malformed."""
    import io
    import zipfile

    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
            stats = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{where}: not a feature-statistics .npz ({error})") from None
    missing = [name for name in STATS_ARRAYS if name not in stats]
    if missing:
        raise ValueError(f"{where}: missing arrays {missing}")
    if int(stats["version"]) != STATS_VERSION:
        raise ValueError(
            f"{where}: statistics version {int(stats['version'])}, this lowbit reads "
            f"{STATS_VERSION}; re-export the model"
        )
    for name in STATS_ARRAYS[1:]:
        if stats[name].dtype != np.float64 or not np.all(np.isfinite(stats[name])):
            raise ValueError(f"{where}: array {name!r} must be finite float64")
    return stats


def load_export_stats(export_dir, description: dict) -> dict | None:
    """Returns the feature-score statistics of an export (model.ood.npz), None if it has none;
    ModelFileError names the file when it is missing, altered or malformed."""
    import hashlib

    from lowbit.errors import ModelFileError

    entry = (description.get("ood") or {}).get("stats")
    if not entry:
        return None
    name = str(entry.get("file", STATS_FILE))
    if Path(name).name != name or name in ("", ".", ".."):
        raise ModelFileError(
            f"{Path(export_dir) / DESCRIPTION_FILE}: ood.stats.file {name!r} must be "
            "a file name in the export folder"
        )
    path = Path(export_dir) / name
    try:
        blob = path.read_bytes()
    except OSError as error:
        raise ModelFileError(
            f"{path}: cannot read ({error.strerror}); re-export the model"
        ) from None
    if hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
        raise ModelFileError(f"{path}: sha256 differs from model.json's; re-export the model")
    try:
        return stats_from_bytes(blob, str(path))
    except ValueError as error:
        raise ModelFileError(str(error)) from None
