"""Arrays larger than memory: scratch stacks in deleted files, and memory maps that give their pages back."""

from __future__ import annotations

import mmap
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def scratch_array(shape: tuple[int, ...], dtype: str | np.dtype) -> np.ndarray:
    """A writable array backed by a temporary file that is already deleted: what is written can leave
    this process's memory (`release_pages`) and is read back from disk when touched, and the file's
    space returns to the system when the array is garbage collected, even after a crash.

    For stacks of features or views that a node returns and the catalog then saves: they need not fit
    in memory beside everything else.
    """
    with tempfile.NamedTemporaryFile(prefix="all_detection_", suffix=".npy") as file:
        return np.lib.format.open_memmap(file.name, mode="w+", dtype=np.dtype(dtype), shape=tuple(shape))


def release_pages(array: np.ndarray) -> None:
    """Drop the pages a memory-mapped array has read from this process's resident memory.

    Streaming once over a 1.5 GB stack of views would otherwise leave all of it counted as the
    process's memory; the pages stay in the kernel's cache and are read back only if touched again.
    Arrays that are not memory-mapped are left alone.
    """
    mapping = getattr(array, "_mmap", None)
    if isinstance(mapping, mmap.mmap) and not mapping.closed:
        mapping.madvise(mmap.MADV_DONTNEED)


def prefetched_batches(array: np.ndarray, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start row, batch) over `array` in order, each batch read into memory as stored (no copy in
    another dtype), the next one read by a background thread while the caller works on this one, so
    reading a memory map from disk overlaps with the device's work. Pages read are released as it goes.
    """
    starts = range(0, len(array), batch_size)

    def read(start: int) -> np.ndarray:
        batch = np.array(array[start : start + batch_size])
        release_pages(array)
        return batch

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as reader:
        pending = reader.submit(read, starts[0]) if starts else None
        for number, start in enumerate(starts):
            batch = pending.result()
            if number + 1 < len(starts):
                pending = reader.submit(read, starts[number + 1])
            yield start, batch
