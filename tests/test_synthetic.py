"""The synthetic smear generator: shapes, determinism, the Kaggle layout, what the authors' threshold sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from all_detection.layout import CLASSES, FILE_PREFIXES, ORIGINAL_DIR, SEGMENTED_DIR
from all_detection.segmentation import AUTHORS_RECIPE, blast_mask
from all_detection.synthetic import (
    render_smear,
    segment_like_dataset,
    write_synthetic_dataset,
)


def smears(label: str, count: int, size: int = 64, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    class_index = CLASSES.index(label)
    return [render_smear(label, np.random.default_rng([seed, class_index, i]), size) for i in range(count)]


@pytest.mark.parametrize("label", CLASSES)
def test_render_smear_gives_an_rgb_image_and_a_cell_mask(label: str) -> None:
    image, cell_mask = render_smear(label, np.random.default_rng(1), size=64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert cell_mask.shape == (64, 64) and cell_mask.dtype == bool
    assert 0 < cell_mask.mean() < 0.5
    assert 150 < image.mean() < 250  # a pale smear, not a blank or a dark frame


@pytest.mark.parametrize("size", [32, 512])
def test_render_smear_scales_with_size(size: int) -> None:
    image, cell_mask = render_smear("Pre", np.random.default_rng(2), size=size)
    assert image.shape == (size, size, 3) and cell_mask.shape == (size, size)
    assert cell_mask.any()


def test_render_smear_is_deterministic_in_its_generator() -> None:
    first, first_mask = render_smear("Early", np.random.default_rng(7), size=64)
    again, again_mask = render_smear("Early", np.random.default_rng(7), size=64)
    other, _ = render_smear("Early", np.random.default_rng(8), size=64)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first_mask, again_mask)
    assert not np.array_equal(first, other)


def test_authors_threshold_keeps_violet_and_drops_red_cells_and_pink() -> None:
    colours = np.array([[[130, 90, 240], [200, 205, 230], [250, 253, 250], [220, 170, 240]]], np.uint8)
    np.testing.assert_array_equal(blast_mask(colours, AUTHORS_RECIPE)[0], [True, False, False, False])


@pytest.mark.parametrize("label", ["Benign", "Early", "Pre"])
def test_authors_threshold_finds_the_lymphoid_cells(label: str) -> None:
    images, cell_masks = zip(*smears(label, 8), strict=True)
    found = np.stack([blast_mask(image, AUTHORS_RECIPE) for image in images])
    cells = np.stack(cell_masks)
    assert found[cells].mean() > 0.6  # most of each cell, nucleus and cytoplasm
    assert found[~cells].mean() < 0.01  # hardly any red cell or background


def test_authors_threshold_finds_almost_nothing_in_pink_pro_smears() -> None:
    found = np.stack([blast_mask(image, AUTHORS_RECIPE) for image, _ in smears("Pro", 8)])
    assert found.mean() < 0.02  # the real Pro files average under 1%, the other classes 5-15%


def test_later_stages_have_larger_cells() -> None:
    mean_area = {
        label: np.mean([mask.mean() for _, mask in smears(label, 20, size=128)]) for label in CLASSES
    }
    assert mean_area["Pre"] > 1.3 * mean_area["Benign"]
    assert mean_area["Pro"] > 1.3 * mean_area["Benign"]


def test_segment_like_dataset_swaps_red_and_blue_inside_the_mask_and_blacks_out_the_rest() -> None:
    image = np.array([[[10, 20, 30], [40, 50, 60]]], np.uint8)
    segmented = segment_like_dataset(image, np.array([[True, False]]))
    np.testing.assert_array_equal(segmented, [[[30, 20, 10], [0, 0, 0]]])
    assert segmented.dtype == np.uint8


def test_write_synthetic_dataset_writes_the_kaggle_layout(tmp_path: Path) -> None:
    summary = write_synthetic_dataset(tmp_path / "ALL", per_class=2, image_size=64, seed=5)
    written = {path.relative_to(tmp_path / "ALL").as_posix() for path in (tmp_path / "ALL").rglob("*.jpg")}
    expected = {
        f"{folder}/{label}/{FILE_PREFIXES[label]}-{number:03d}.jpg"
        for folder in (ORIGINAL_DIR, SEGMENTED_DIR)
        for label in CLASSES
        for number in (1, 2)
    }
    assert written == expected
    assert "Original/Pro/WBC-Malignant-Pro-001.jpg" in written
    assert "Segmented/Pro/WBC-Malignant-Pro-001.jpg" in written
    for relative in written:
        with Image.open(tmp_path / "ALL" / relative) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 64))
    assert summary == {
        "root": str(tmp_path / "ALL"),
        "per_class": 2,
        "image_size": 64,
        "seed": 5,
        "counts": dict.fromkeys(CLASSES, 2),
    }


def test_write_synthetic_dataset_saves_colours_the_right_way_round(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path, per_class=1, image_size=64, seed=5)
    name = f"{FILE_PREFIXES['Early']}-001.jpg"
    image, cell_mask = render_smear("Early", np.random.default_rng([5, CLASSES.index("Early"), 1]), 64)
    original = np.asarray(Image.open(tmp_path / ORIGINAL_DIR / "Early" / name), dtype=float)
    segmented = np.asarray(Image.open(tmp_path / SEGMENTED_DIR / "Early" / name), dtype=float)
    # saved as RGB: JPEG loss alone is far smaller than the error a red-blue mix-up would make
    assert np.abs(original - image).mean() < 0.5 * np.abs(original - image[..., ::-1]).mean()
    violet = cell_mask & blast_mask(image, AUTHORS_RECIPE)
    red, blue = segmented[violet].mean(0)[[0, 2]]
    assert red > blue  # the authors' swap makes violet cells pink on black
    assert segmented[~cell_mask].mean() < 20


def test_write_synthetic_dataset_is_byte_for_byte_reproducible(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path / "a", per_class=1, image_size=64, seed=9)
    write_synthetic_dataset(tmp_path / "b", per_class=1, image_size=64, seed=9)
    write_synthetic_dataset(tmp_path / "c", per_class=1, image_size=64, seed=10)
    name = f"{ORIGINAL_DIR}/Benign/{FILE_PREFIXES['Benign']}-001.jpg"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()
