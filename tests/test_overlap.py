"""Overlapping fields (`all_detection.overlap`): a synthetic field and a copy shifted by tens of pixels
are one field; two different fields are not; and ingestion keeps a shifted pair in one group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from all_detection.image_io import ImageFolder
from all_detection.overlap import field_features, overlapping_pairs, shared_keypoints
from all_detection.pipelines.ingestion.nodes import find_overlapping_fields, group_duplicates
from all_detection.synthetic import render_smear
from tests.pipelines.ingestion.test_nodes import CORNERS, INGESTION, OVERLAP, file_table

SIZE = 224


def wide_field(label: str, seed: int) -> np.ndarray:
    """A field larger than one image, to cut overlapping windows from."""
    return render_smear(label, np.random.default_rng(seed), 320)[0]


def window(field: np.ndarray, x: int, y: int) -> np.ndarray:
    return np.ascontiguousarray(field[y : y + SIZE, x : x + SIZE])


def features(rgb: np.ndarray):
    return field_features(rgb, OVERLAP["keypoints"], CORNERS["fraction"])


def test_a_shifted_copy_of_a_field_is_one_field_and_another_field_is_not():
    first, second = wide_field("Pre", 1), wide_field("Pre", 2)
    original, shifted = features(window(first, 10, 20)), features(window(first, 60, 45))
    other = features(window(second, 10, 20))
    assert shared_keypoints(original, shifted) >= 4 * OVERLAP["min_shared_keypoints"]
    assert shared_keypoints(original, other) < OVERLAP["min_shared_keypoints"]
    # Among several fields, only the shifted pair joins.
    crowd = [original, other, shifted] + [
        features(window(wide_field("Early", seed), 0, 0)) for seed in (3, 4, 5)
    ]
    assert [(a, b) for a, b, _ in overlapping_pairs(crowd, OVERLAP)] == [(0, 2)]
    # However many neighbours are checked, the answer is the same.
    assert [(a, b) for a, b, _ in overlapping_pairs(crowd, {**OVERLAP, "candidates": 5})] == [(0, 2)]


def test_ingestion_groups_overlapping_fields_in_one_split(tmp_path: Path):
    field = wide_field("Pro", 6)
    images = {
        "a.png": window(field, 0, 0),
        "b.png": window(field, 50, 30),
        "c.png": window(wide_field("Pro", 7), 0, 0),
    }
    for name, rgb in images.items():
        (tmp_path / "Original" / "Pro").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(tmp_path / "Original" / "Pro" / name)
    # Perceptual hashes far apart: only the keypoints see that a and b are one field.
    files = file_table([(f"Original/Pro/{name}", name, f"{k * 0x0F0F0F0F0F0F0F0F:016x}", "ok")
                        for k, name in enumerate(images)])  # fmt: skip
    overlaps = find_overlapping_fields(files, ImageFolder(tmp_path), INGESTION, CORNERS)
    assert overlaps[["first", "second"]].values.tolist() == [["Original/Pro/a.png", "Original/Pro/b.png"]]
    grouped = group_duplicates(files.assign(counterpart=pd.NA), 0, overlaps).set_index("path")
    assert grouped.loc["Original/Pro/a.png", "group"] == grouped.loc["Original/Pro/b.png", "group"]
    assert grouped.loc["Original/Pro/c.png", "group"] != grouped.loc["Original/Pro/a.png", "group"]
    assert grouped["duplicate_kind"].tolist() == ["overlap", "overlap", "unique"]
    # Switched off, nothing is searched.
    switched_off = {**INGESTION, "overlap": {**OVERLAP, "candidates": 0}}
    assert find_overlapping_fields(files, ImageFolder(tmp_path), switched_off, CORNERS).empty
