"""The random half of the paired statistics: bootstrap resamples and sign-flip null distributions.

Invariants: every draw comes from one ``numpy.random.default_rng(seed)`` stream, row after row, so results do
not depend on the chunk size that bounds memory (about 1 MB of draws per chunk whatever ``n``); the count and
the index forms of a bootstrap have the same distribution (:data:`Resampling`). Arrays in, arrays out: the
shaping of inputs (errored cases, alignment) and the intervals and p-values built from these draws are
:mod:`.stats`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np

__all__ = ["CHUNK_ELEMENTS", "Resampling", "count_replicates", "index_chunks", "index_mean_replicates",
           "mean_replicates", "replicates", "sign_flip_null_sums"]

Resampling = Literal["auto", "cases", "counts"]
"""How the bootstrap of a mean draws its resamples; every choice gives the same bootstrap distribution.

``cases``: ``n`` case indices with replacement per resample, then the mean of the gathered differences (any
data; cost ``n`` per resample). ``counts``: the number of times each distinct difference is drawn, one
multinomial vector per resample with the observed shares as probabilities, then ``counts @ values / n``
(cost ``k`` per resample for ``k`` distinct values; exact for pass/fail and exact-match metrics, whose
differences are -1, 0 or 1). ``auto``: ``counts`` when that is cheaper, i.e. at most 256 distinct values and
at least 32 cases per distinct value, else ``cases``."""

# About 1 MB of int64 indices (plus as much for gathered values) per chunk, whatever n is. Bigger chunks are
# slower, not faster: each new multi-megabyte array is fresh memory from the OS, and its page faults cost more
# than the draws (measured: 10 000 resamples of n = 8 000 took 0.53 s with 8 MB chunks, 0.31 s like this).
CHUNK_ELEMENTS = 1 << 17
# numpy draws a multinomial category in ~100 ns (one binomial) and a case index plus its gather in ~4 ns:
# counts are cheaper with at least ~25 cases per distinct value; 32 keeps a margin. The cap bounds the
# (resamples x values) count matrix.
_COUNTS_MAX_VALUES = 256
_COUNTS_MIN_CASES_PER_VALUE = 32

# Distinct |d| values at most this share of the non-zero differences: one binomial (~60 ns) per value beats
# a table lookup (~0.3 ns per case) per sign vector.
_FLIP_MIN_CASES_PER_VALUE = 128


def index_chunks(n: int, n_resamples: int, seed: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, ``integers(0, n, size=(m, n))``) chunks covering ``n_resamples`` rows of case indices.

    numpy's Generator draws ``integers(size=(m, n))`` row-major from one stream, so chunked draws equal one
    big draw (and equal n-sized draws made one resample at a time).
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    rows = max(1, CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, rows):
        yield start, rng.integers(0, n, size=(min(rows, n_resamples - start), n))


def replicates(n: int, stat: Callable[[np.ndarray], np.ndarray], n_resamples: int, seed: int) -> np.ndarray:
    """``stat(idx)`` over ``n_resamples`` rows of resampled indices, drawn in memory-bounded chunks."""
    out = np.empty(n_resamples)
    for start, idx in index_chunks(n, n_resamples, seed):
        m = idx.shape[0]
        values = np.asarray(stat(idx), dtype=float)
        if values.shape != (m,):
            raise ValueError(f"stat_fn must return one value per resample, shape ({m},), got {values.shape}")
        out[start : start + m] = values
    return out


def index_mean_replicates(d: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """``d[idx].mean(axis=1)`` over the chunks of :func:`index_chunks`, gathered into one reused buffer."""
    out = np.empty(n_resamples)
    gathered = np.empty((max(1, CHUNK_ELEMENTS // d.size), d.size))
    for start, idx in index_chunks(d.size, n_resamples, seed):
        chunk = gathered[: idx.shape[0]]
        np.take(d, idx, out=chunk)
        chunk.mean(axis=1, out=out[start : start + idx.shape[0]])
    return out


def count_replicates(values: np.ndarray, counts: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Bootstrap means drawn as multinomial counts of the distinct ``values`` (observed ``counts``).

    Resampling n cases with replacement draws each distinct value a Multinomial(n, counts / n) number of
    times, so ``counts_drawn @ values / n`` has exactly the distribution of the resampled mean. Every count is
    at least 1, so numpy's sequential conditional binomials never see a probability above 1. Rows are drawn
    one after another from one stream, so chunks equal one big draw.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    n = int(counts.sum())
    rng = np.random.default_rng(seed)
    shares = counts / n
    rows = max(1, CHUNK_ELEMENTS // values.size)
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, rows):
        m = min(rows, n_resamples - start)
        out[start : start + m] = (rng.multinomial(n, shares, size=m) @ values) / n
    return out


def mean_replicates(d: np.ndarray, n_resamples: int, seed: int, resampling: Resampling = "auto") -> np.ndarray:
    """Bootstrap distribution of ``mean(d)``, by case indices or by counts of distinct values."""
    if resampling not in ("auto", "cases", "counts"):
        raise ValueError(f"resampling must be 'auto', 'cases' or 'counts', got {resampling!r}")
    if resampling != "cases":
        values, counts = np.unique(d, return_counts=True)
        cheaper = (values.size <= _COUNTS_MAX_VALUES
                   and values.size * _COUNTS_MIN_CASES_PER_VALUE <= d.size)
        if resampling == "counts" or cheaper:
            return count_replicates(values, counts, n_resamples, seed)
    return index_mean_replicates(d, n_resamples, seed)


def sign_flip_null_sums(nonzero: np.ndarray, n_perm: int, seed: int) -> np.ndarray:
    """``sum(s·d)`` for ``n_perm`` random sign vectors ``s`` over the non-zero differences ``d``.

    With few distinct ``|d|`` (pass/fail metrics: one) the flips of a value ``v`` met ``c`` times add
    ``v·(2·Binomial(c, ½) - c)``; otherwise each random byte picks one of the 256 precomputed sign sums of a
    block of 8 cases. Both give the distribution of ``n_perm × n`` independent signs.
    """
    rng = np.random.default_rng(seed)
    values, counts = np.unique(np.abs(nonzero), return_counts=True)
    null_sums = np.empty(n_perm)
    if values.size * _FLIP_MIN_CASES_PER_VALUE <= nonzero.size:
        rows = max(1, CHUNK_ELEMENTS // values.size)
        for start in range(0, n_perm, rows):
            m = min(rows, n_perm - start)
            positive = rng.binomial(counts, 0.5, size=(m, values.size))
            null_sums[start : start + m] = (2 * positive - counts) @ values
    else:
        # sum(s·d) = 2·sum(d where s = +1) - sum(d); table[block, byte] = sum of the block's d picked by byte.
        blocks = -(-nonzero.size // 8)
        padded = np.zeros(blocks * 8)
        padded[: nonzero.size] = nonzero
        bits = (np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1
        table = (padded.reshape(blocks, 8) @ bits.T).ravel()
        offsets = np.arange(blocks) * 256
        total = float(nonzero.sum())
        words = -(-blocks // 8)
        rows = max(1, CHUNK_ELEMENTS // blocks)
        for start in range(0, n_perm, rows):
            m = min(rows, n_perm - start)
            # Whole 64-bit words per row (read as bytes): row-major draws, so chunks equal one big draw.
            words_drawn = rng.integers(0, 2**64, size=(m, words), dtype=np.uint64)
            picks = words_drawn.view(np.uint8)[:, :blocks]
            null_sums[start : start + m] = 2 * table[offsets + picks].sum(axis=1) - total
    return null_sums
