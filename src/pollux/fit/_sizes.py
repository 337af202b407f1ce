"""How many stars the kernels run on (padding) and in what chunks."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..core.chunks import auto_chunk_size, bucket, n_chunks, pad_block

__all__ = ["PAD_BYTES", "chunk_size_for", "pad_blocks", "padded_rows", "padded_size"]

#: Closed-form fits, posteriors and predictions whose padded arrays take at most
#: this many bytes run on a number of stars padded with missing ones to its
#: `~pollux.core.chunks.bucket` (then a few more or fewer stars reuse the compiled
#: programs: cross-validation folds, batches). Larger problems are not padded: the
#: copy would cost memory, and compiling is short against their run time.
PAD_BYTES = 64 * 2**20


def padded_size(n: int, row_bytes: int) -> int:
    """Stars the kernels run on: ``n`` padded to its bucket when the padded arrays
    (``row_bytes`` per star) take at most `PAD_BYTES`, else ``n``.

    >>> padded_size(40, 100)
    48
    """
    size = bucket(n)
    return size if size * row_bytes <= PAD_BYTES else n


def padded_rows(n: int, row_bytes: int, n_devices: int) -> tuple[int, int]:
    """``(stars, stars per device)`` the kernels run on: `padded_size`, rounded up
    to a multiple of ``n_devices``."""
    total = -(-padded_size(n, row_bytes) // n_devices) * n_devices
    return total, total // n_devices


def pad_blocks(blocks: tuple, n_devices: int) -> tuple[tuple, int, int]:
    """``blocks`` padded with missing stars (`padded_rows`), their length and the
    stars per device."""
    row = sum(
        b.values.shape[1] * b.values.dtype.itemsize * (1 if b.errors is None else 2)
        for b in blocks
    )
    n_pad, n_local = padded_rows(blocks[0].values.shape[0], row, n_devices)
    return tuple(pad_block(b, n_pad) for b in blocks), n_pad, n_local


def chunk_size_for(
    chunk_size: int | None, n: int, widths: Iterable[int], k: int, dtype
) -> int:
    """``chunk_size`` (checked by the caller), or, when None, the size of the
    fewest chunks within the memory budget that cover ``n`` stars evenly (the
    last chunk then overlaps the one before by less than their number)."""
    if chunk_size is None:
        size = auto_chunk_size(n, sum(widths), k, np.dtype(dtype).itemsize)
        return -(-n // n_chunks(n, size))
    return chunk_size
