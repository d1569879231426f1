"""Catalog datasets kedro-datasets lacks: numpy arrays stored as `.npy` and loaded memory-mapped."""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import numpy as np
from kedro.io import AbstractDataset


class NumpyArrayDataset(AbstractDataset[np.ndarray, np.ndarray]):
    """One numpy array in a `.npy` file, loaded memory-mapped so a run pages in only what it reads.

    Image stacks of a whole split (thousands of 224x224x3 uint8 images) are read batch by batch during
    training instead of being decoded from JPEG every epoch or held twice in memory. Saving writes to a
    temporary file and renames it, so a crash never leaves a half-written array behind.

    Example catalog entry::

        train_images:
          type: all_detection.datasets.NumpyArrayDataset
          filepath: data/05_model_input/train_images.npy
    """

    def __init__(self, filepath: str, mmap_mode: str | None = "r", metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self._mmap_mode = mmap_mode
        self.metadata = metadata

    def load(self) -> np.ndarray:
        return np.load(self._filepath, mmap_mode=self._mmap_mode, allow_pickle=False)

    def save(self, data: np.ndarray) -> None:
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        partial = self._filepath.with_name(f".{self._filepath.name}.partial")
        with partial.open("wb") as file:
            np.save(file, np.asarray(data), allow_pickle=False)
        partial.replace(self._filepath)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "mmap_mode": self._mmap_mode}


def release_pages(array: np.ndarray) -> None:
    """Drop the pages a memory-mapped array has read from this process's resident memory.

    Streaming once over a 1.5 GB stack of views would otherwise leave all of it counted as the
    process's memory; the pages stay in the kernel's cache and are read back only if touched again.
    Arrays that are not memory-mapped are left alone.
    """
    mapping = getattr(array, "_mmap", None)
    if isinstance(mapping, mmap.mmap) and not mapping.closed:
        mapping.madvise(mmap.MADV_DONTNEED)
