"""The project's catalog datasets: numpy stacks saved whole, loaded memory-mapped, pages released after
reading; image folders read without following links and written only where nobody else's files are."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from kedro.io import DatasetError

from all_detection.core.arrays import release_pages, scratch_array
from all_detection.datasets import ImageFolderDataset, MlflowModelRegistrationDataset, NumpyArrayDataset
from all_detection.image_io import SYMBOLIC_LINK, UnusableImage
from all_detection.synthetic import synthetic_files, write_synthetic_dataset

LIMITS = {"min_side_px": 32, "max_pixels": 40_000_000, "max_file_mb": 100}


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


def test_an_image_folder_lists_and_reads_without_following_links(tmp_path):
    root, outside = tmp_path / "images", tmp_path / "outside"
    write_synthetic_dataset(outside, per_class=1, image_size=48, seed=1)
    write_synthetic_dataset(root, per_class=1, image_size=48, seed=2)
    (root / "Original" / "linked").symlink_to(outside / "Original" / "Pro")
    (root / "Original" / "Pro" / "link.jpg").symlink_to(next((outside / "Original" / "Pro").iterdir()))
    folder = ImageFolderDataset(str(root)).load()
    listed = {str(path) for path in folder.files()}
    assert {"Original/linked", "Original/Pro/link.jpg"} <= listed
    assert not any(path.startswith("Original/linked/") for path in listed)
    ok = "Original/Pro/WBC-Malignant-Pro-001.jpg"
    assert folder.read_rgb(ok, LIMITS).shape == (48, 48, 3)
    for linked in ("Original/Pro/link.jpg", "Original/linked/WBC-Malignant-Pro-001.jpg"):
        with pytest.raises(UnusableImage, match="symbolic link"):
            folder.read_rgb(linked, LIMITS)
    assert folder.inspect(PurePosixPath("Original/Pro/link.jpg"), LIMITS)["reason"] == SYMBOLIC_LINK


def test_an_image_folder_is_written_only_where_nobody_else_s_files_are(tmp_path):
    files = synthetic_files(per_class=1, image_size=48, seed=3)
    target = ImageFolderDataset(str(tmp_path / "demo"))
    assert target.writable() is None and not target.exists()
    target.save(files)
    written = {path.relative_to(tmp_path / "demo").as_posix(): path.read_bytes()
               for path in (tmp_path / "demo").rglob("*") if path.is_file()}  # fmt: skip
    assert written == files and target.exists()
    stamp = (tmp_path / "demo" / next(iter(files))).stat().st_mtime_ns
    target.save(files)  # the same content again: nothing is rewritten
    assert (tmp_path / "demo" / next(iter(files))).stat().st_mtime_ns == stamp
    target.save({"Original/Pro/one.jpg": b"new"})  # other content replaces the whole folder
    assert [path.name for path in (tmp_path / "demo").rglob("*.*")] == ["one.jpg"]

    theirs = tmp_path / "theirs"
    (theirs / "Original").mkdir(parents=True)
    (theirs / "Original" / "x.jpg").write_bytes(b"someone's")
    refused = ImageFolderDataset(str(theirs))
    assert "was not written by this project" in refused.writable()
    with pytest.raises(DatasetError, match="was not written by this project"):
        refused.save(files)
    assert [path.name for path in theirs.rglob("*.*")] == ["x.jpg"]
    with pytest.raises(DatasetError, match="not a path inside the folder"):
        ImageFolderDataset(str(tmp_path / "new")).save({"../escape.jpg": b"x"})
    assert not (tmp_path / "escape.jpg").exists()


def test_registration_without_a_run_in_progress_records_that_nothing_was_registered(tmp_path):
    import mlflow  # noqa: PLC0415

    from all_detection.serving import ServableModel  # noqa: PLC0415

    assert mlflow.active_run() is None  # tracking off: nothing to log the model to
    record = MlflowModelRegistrationDataset(
        str(tmp_path / "reports/model_registration.json"), "all_detection"
    )
    record.save(ServableModel(model=None, example_images=np.zeros((1, 32, 32, 3), np.uint8)))
    assert record.load() == {"registered": False} and record.exists()


def test_an_image_folder_interrupted_while_written_is_finished_by_the_next_save(tmp_path):
    files = synthetic_files(per_class=1, image_size=48, seed=3)
    target = ImageFolderDataset(str(tmp_path / "demo"))
    target.save(files)
    # As a crash after the record was written and before the new content was swapped in leaves it.
    (tmp_path / "demo" / next(iter(files))).write_bytes(b"stale")
    target.save(files)
    assert (tmp_path / "demo" / next(iter(files))).read_bytes() == files[next(iter(files))]
