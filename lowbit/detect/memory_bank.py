"""A PatchCore-style memory bank on integer patch codes, with exact integer distances.

PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022)
keeps the patch features of defect-free images in a memory bank, thinned by greedy k-center
coreset selection (Sec. 3.2, Alg. 1), and scores a query patch by the distance to its nearest
bank entry (Sec. 3.3); the image score is the largest patch score. Here the features are a
quantized trunk's integer codes, so every distance is an exact integer:

    d(a) = min_b ||a - b||^2 = ||a||^2 - max_b (2 a.b - ||b||^2)

Overflow bound, for codes in [low, high] over C channels and m = max(|low|, |high|):
||a||^2 <= C m^2, |a.b| <= C m^2, 2 a.b - ||b||^2 lies in [-3 C m^2, 2 C m^2], d in
[0, 4 C m^2]; `distance_bound` returns 4 C m^2 and every function checks it against int64.
Every value formed on the way (the GEMM's partial sums of a.b, within C m^2; 2 a.b - ||b||^2,
within 3 C m^2; a coreset distance ||x||^2 - 2 x.p + ||p||^2, within 4 C m^2) is an integer
under 4 C m^2, so the whole computation runs in the type the runtime's exact-GEMM rule picks
for that bound (lowbit/runtime/gemm.py: float32 BLAS below 2^24, float64 below 2^53, else
int64) and equals the int64 one; only the per-query minimum is cast to int64.
"""

from __future__ import annotations

import numpy as np

from lowbit.runtime.gemm import exact_gemm_dtype

INT64_LIMIT = 2**63 - 1
_QUERY_CHUNK_ENTRIES = 1 << 22  # queries x bank entries per chunk: 16 MiB of float32 dots


def distance_bound(code_range: tuple[int, int], channels: int) -> int:
    """Return 4 C m^2, the largest magnitude of any term in the nearest-distance formula."""
    low, high = (int(v) for v in code_range)
    if low > high or channels < 1:
        raise ValueError(f"bad code range {code_range} or channel count {channels}")
    largest = max(abs(low), abs(high))
    return 4 * channels * largest * largest


def _exact_dtype(code_range: tuple[int, int], channels: int) -> type:
    """Return the cheapest dtype that holds every integer within 4 C m^2 exactly."""
    bound = distance_bound(code_range, channels)
    return {"float32": np.float32, "float64": np.float64}.get(exact_gemm_dtype(bound), np.int64)


def check_codes(codes: np.ndarray, code_range: tuple[int, int]) -> np.ndarray:
    """Return `codes` as int64 after checking they are integers in `code_range` and int64-safe."""
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iub":
        raise ValueError(f"patch codes must be integers, got {codes.dtype}")
    if codes.ndim < 2:
        raise ValueError(f"patch codes need a channel axis, got shape {codes.shape}")
    low, high = code_range
    if codes.size and (codes.min() < low or codes.max() > high):
        raise ValueError(f"codes span [{codes.min()}, {codes.max()}], outside {code_range}")
    channels = codes.shape[-1] if codes.ndim == 2 else codes.shape[1]
    bound = distance_bound(code_range, channels)
    if bound > INT64_LIMIT:
        raise ValueError(f"distance bound {bound} for {code_range} x {channels} exceeds int64")
    return codes.astype(np.int64)


def patch_vectors(codes: np.ndarray) -> np.ndarray:
    """Return the [N*H*W, C] patch vectors of codes [N, C, H, W], image-major then row-major."""
    n, c, h, w = codes.shape
    return np.ascontiguousarray(np.moveaxis(codes, 1, -1).reshape(n * h * w, c))


def nearest_squared_distance(
    queries: np.ndarray, bank: np.ndarray, code_range: tuple[int, int]
) -> np.ndarray:
    """Return int64 [Q]: min over bank rows b of ||a - b||^2, for each query row a of [Q, C]."""
    queries, bank = check_codes(queries, code_range), check_codes(bank, code_range)
    if len(bank) == 0:
        raise ValueError("the memory bank is empty")
    dtype = _exact_dtype(code_range, bank.shape[1])
    bank_sq = np.einsum("ij,ij->i", bank, bank)
    query_sq = np.einsum("ij,ij->i", queries, queries)
    bank_t, bank_sq_t, queries_t = (
        bank.T.astype(dtype),
        bank_sq.astype(dtype),
        queries.astype(dtype),
    )
    best = np.empty(len(queries), dtype=np.int64)
    step = max(1, _QUERY_CHUNK_ENTRIES // len(bank))
    for start in range(0, len(queries), step):
        part = slice(start, start + step)
        closeness = queries_t[part] @ bank_t
        closeness *= 2
        closeness -= bank_sq_t  # 2 a.b - ||b||^2, exact in dtype
        best[part] = query_sq[part] - closeness.max(axis=1).astype(np.int64)
    return best


def greedy_coreset(
    vectors: np.ndarray, max_entries: int, code_range: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Return (indices, radii) of the greedy k-center coreset of `vectors` [N, C].

    Deterministic: the first pick is row 0, each next pick the row farthest (squared distance)
    from the picks so far, the lowest index on ties. `radii[i]` is the covering radius, the
    largest squared distance of any row to its nearest of the first i + 1 picks: non-increasing.
    Stops early when every row is covered exactly (radius 0).
    """
    vectors = check_codes(vectors, code_range)
    if max_entries < 1 or len(vectors) == 0:
        raise ValueError(f"need max_entries >= 1 and rows, got {max_entries}, {len(vectors)}")
    dtype = _exact_dtype(code_range, vectors.shape[1])
    as_dtype = vectors.astype(dtype)
    squares = np.einsum("ij,ij->i", vectors, vectors).astype(dtype)

    def distances_to(row: int) -> np.ndarray:  # ||x||^2 - 2 x.p + ||p||^2, exact in dtype
        distances = as_dtype @ as_dtype[row]
        distances *= -2
        distances += squares
        distances += squares[row]
        return distances

    picks, radii = [0], []
    nearest = distances_to(0)
    while True:
        farthest = int(np.argmax(nearest))
        radii.append(int(nearest[farthest]))
        if len(picks) == max_entries or radii[-1] == 0:
            break
        picks.append(farthest)
        np.minimum(nearest, distances_to(farthest), out=nearest)
    return np.array(picks, dtype=np.int64), np.array(radii, dtype=np.int64)


def fit_memory_bank(codes: np.ndarray, max_entries: int, code_range: tuple[int, int]) -> np.ndarray:
    """Return the memory bank [M <= max_entries, C] of the patch codes [N, C, H, W] of good images.

    Identical patches are kept once (np.unique: sorted, which changes no nearest distance);
    when more distinct patches remain than `max_entries`, the greedy coreset keeps the
    `max_entries` that cover the rest best.
    """
    distinct = np.unique(patch_vectors(check_codes(codes, code_range)), axis=0)
    if len(distinct) <= max_entries:
        return distinct
    picks, _ = greedy_coreset(distinct, max_entries, code_range)
    return distinct[picks]


def anomaly_map(bank: np.ndarray, codes: np.ndarray, code_range: tuple[int, int]) -> np.ndarray:
    """Return the int64 anomaly map [N, H, W]: each patch's squared distance to the bank."""
    n, _, h, w = codes.shape
    return nearest_squared_distance(patch_vectors(codes), bank, code_range).reshape(n, h, w)


def image_scores(maps: np.ndarray) -> np.ndarray:
    """Return each image's anomaly score, the largest value of its map [N, H, W] (int64 [N])."""
    return maps.reshape(len(maps), -1).max(axis=1)
