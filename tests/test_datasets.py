"""The project's numpy catalog dataset: saved whole, loaded memory-mapped, pages released after reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from all_detection.core.arrays import release_pages, scratch_array
from all_detection.datasets import NumpyArrayDataset


def resident_file_kb() -> int:
    status = Path("/proc/self/status").read_text().splitlines()
    (line,) = [line for line in status if line.startswith("RssFile")]
    return int(line.split()[1])


def test_round_trip_is_exact_and_memory_mapped(tmp_path):
    dataset = NumpyArrayDataset(str(tmp_path / "stacks" / "train_images.npy"))
    assert not dataset.exists()
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    dataset.save(images)
    loaded = dataset.load()
    assert isinstance(loaded, np.memmap) and loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, images)
    assert not list((tmp_path / "stacks").glob(".*partial"))  # written aside, then renamed


def test_released_pages_leave_resident_memory_and_read_back_the_same(tmp_path):
    dataset = NumpyArrayDataset(str(tmp_path / "views.npy"))
    dataset.save(np.full((400, 128, 128, 3), 7, dtype=np.uint8))  # 19 MB
    views = dataset.load()
    before = resident_file_kb()
    assert int(views.sum(dtype=np.int64)) == 7 * views.size
    touched = resident_file_kb()
    release_pages(views)
    assert touched - before > 15_000
    assert resident_file_kb() - before < 2_000
    assert int(views[123].sum(dtype=np.int64)) == 7 * 128 * 128 * 3
    release_pages(np.zeros(3))  # an in-memory array is left alone


def resident_kb() -> int:
    status = Path("/proc/self/status").read_text().splitlines()
    (line,) = [line for line in status if line.startswith("VmRSS")]
    return int(line.split()[1])


def test_a_scratch_stack_is_written_and_saved_without_being_held_in_memory(tmp_path):
    before = resident_kb()
    features = scratch_array((100, 14, 14, 512), "float16")  # 20 MB, as cached maps of 100 images
    for start in range(0, 100, 10):
        features[start : start + 10] = start
        release_pages(features)
    assert resident_kb() - before < 8_000
    dataset = NumpyArrayDataset(str(tmp_path / "train_features.npy"))
    dataset._SLAB_BYTES = 2 * 2**20
    dataset.save(features)
    assert resident_kb() - before < 8_000
    loaded = dataset.load()
    assert loaded.shape == (100, 14, 14, 512) and loaded.dtype == np.float16
    assert loaded[95, 3, 3, 7] == 90 and loaded[0].max() == 0
    # The scratch file was deleted on creation: nothing is left behind in the temporary folder.
    assert not Path(features.filename).exists()


def test_empty_and_scalar_arrays_are_saved_too(tmp_path):
    dataset = NumpyArrayDataset(str(tmp_path / "empty.npy"))
    dataset.save(np.zeros((0,), np.float16))  # what online training caches
    assert dataset.load().shape == (0,)
    dataset.save(np.float32(3.5))
    assert dataset.load() == np.float32(3.5)
