"""Ingestion nodes: on hand-made file tables, and on a folder holding every defect real folders have."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from all_detection import image_io
from all_detection.image_io import ImageFolder
from all_detection.offline import run_in_process
from all_detection.pipelines import ingestion
from all_detection.pipelines.ingestion.nodes import (
    CONFLICTING_LABELS,
    DatasetLayoutError,
    assign_splits,
    group_duplicates,
    pair_segmented_copies,
    quarantine_conflicting_duplicates,
    scan_image_folder,
    summarise_data_quality,
)
from tests.defects import write_defective_dataset

OVERLAP = {"candidates": 10, "keypoints": 500, "min_shared_keypoints": 15}
INGESTION = {"min_side_px": 32, "max_pixels": 40_000_000, "max_file_mb": 100, "near_duplicate_max_bits": 10,
             "overlap": OVERLAP}  # fmt: skip
CORNERS = {"fraction": 0.15, "painted": False}
NO_OVERLAPS = pd.DataFrame({"first": pd.Series(dtype="string"), "second": pd.Series(dtype="string"),
                            "shared_keypoints": pd.Series(dtype="int64")})  # fmt: skip
SPLIT = {"test_fraction": 0.2, "val_fraction": 0.1, "seed": 42}


def ingest(root: Path, split: dict = SPLIT) -> pd.DataFrame:
    """The manifest the ingestion pipeline makes of `root`, run in memory as the project wires it."""
    parameters = {"ingestion": INGESTION, "split": split, "preprocessing": {"corners": CORNERS}}
    pipeline = ingestion.create_pipeline().to_outputs("manifest")
    return run_in_process(pipeline, parameters, {"raw_images": ImageFolder(root)})["manifest"]


def file_table(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    """A scan result by hand: (path, sha256, phash, status) per row, label and folder read from the path."""
    records = []
    for path, sha256, phash, status in rows:
        folder, label = path.split("/")[:2]
        records.append(
            {"path": path, "folder": folder, "label": label, "status": status, "reason": None,
             "detail": None, "sha256": sha256, "phash": phash}
        )  # fmt: skip
    return pd.DataFrame(records)


@pytest.fixture(scope="module")
def defective_manifest(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, dict]:
    root = tmp_path_factory.mktemp("defective") / "ALL"
    expected = write_defective_dataset(root)
    return ingest(root), expected


def test_every_file_gets_exactly_one_row(defective_manifest):
    manifest, expected = defective_manifest
    assert sorted(manifest["path"]) == sorted(expected)
    assert manifest["path"].is_unique


def test_bad_files_are_quarantined_with_their_reason_and_good_ones_kept(defective_manifest):
    manifest, expected = defective_manifest
    verdicts = {row.path: None if pd.isna(row.reason) else row.reason for row in manifest.itertuples()}
    assert verdicts == expected
    assert set(manifest.loc[manifest["reason"].isna(), "status"]) == {"ok"}
    assert set(manifest.loc[manifest["reason"].notna(), "status"]) == {"quarantined"}
    assert manifest.loc[manifest["status"] == "quarantined", "split"].isna().all()


def test_links_are_recorded_but_never_followed(defective_manifest):
    manifest, _ = defective_manifest
    assert not manifest["path"].str.contains("Linked/").any()
    assert not manifest["path"].str.contains("WBC-Benign-500").any()


def test_unusual_but_valid_images_are_read_as_rgb(defective_manifest):
    manifest, _ = defective_manifest
    rows = manifest.set_index("path")
    pro = rows[rows.index.str.startswith("Original/Pro/WBC-Malignant-Pro-90")]
    assert set(pro["status"]) == {"ok"}
    assert set(pro["file_mode"]) >= {"L", "CMYK", "RGBA", "I;16"}
    assert pro.loc["Original/Pro/WBC-Malignant-Pro-904.jpg", "file_format"] == "PNG"
    assert pro.loc["Original/Pro/WBC-Malignant-Pro-907.jpg", ["width", "height"]].tolist() == [1600, 1200]


def test_duplicates_share_a_group_and_a_split(defective_manifest):
    manifest, _ = defective_manifest
    rows = manifest.set_index("path")
    exact = rows.loc[["Original/Benign/WBC-Benign-003.jpg", "Original/Benign/WBC-Benign-903-copy.jpg"]]
    near = rows.loc[["Original/Benign/WBC-Benign-004.jpg", "Original/Benign/WBC-Benign-904-reencoded.jpg"]]
    for pair, kind in ((exact, "exact"), (near, "near")):
        assert pair["group"].nunique() == 1
        assert pair["split"].nunique() == 1
        assert set(pair["duplicate_kind"]) == {kind}
    grey_copy = ["Original/Early/WBC-Malignant-Early-001.jpg", "Original/Pro/WBC-Malignant-Pro-901.jpg"]
    relabelled = rows.loc[grey_copy]
    assert relabelled["group"].nunique() == 1
    assert set(relabelled["duplicate_kind"]) == {"near"}
    usable = rows[(rows["status"] == "ok") & (rows["folder"] == "Original")]
    assert (usable["duplicate_kind"] == "unique").sum() == usable["group"].nunique() - 3


def test_segmented_copies_follow_their_original(defective_manifest):
    manifest, _ = defective_manifest
    rows = manifest.set_index("path")
    copies = rows[(rows["folder"] == "Segmented") & (rows["status"] == "ok")]
    originals = rows.loc[copies["counterpart"]]
    assert copies["split"].tolist() == originals["split"].tolist()
    assert copies["group"].tolist() == originals["group"].tolist()
    assert (originals["counterpart"].to_numpy() == copies.index.to_numpy()).all()


def test_conflicting_labels_quarantine_both_copies():
    files = file_table(
        [
            ("Original/Early/a.jpg", "same", "00", "ok"),
            ("Original/Pre/b.jpg", "same", "00", "ok"),
            ("Original/Pre/c.jpg", "other", "ff", "ok"),
            ("Segmented/Pre/b.jpg", "black", "00", "ok"),
            ("Segmented/Pro/d.jpg", "black", "00", "ok"),
        ]
    )
    checked = quarantine_conflicting_duplicates(files).set_index("path")
    both_copies = checked.loc[["Original/Early/a.jpg", "Original/Pre/b.jpg"], "reason"]
    assert both_copies.tolist() == [CONFLICTING_LABELS] * 2
    assert checked.loc["Original/Early/a.jpg", "detail"] == "labels Early, Pre"
    # Identical all-black Segmented copies under two classes say nothing about the label.
    untouched = checked.loc[["Original/Pre/c.jpg", "Segmented/Pre/b.jpg", "Segmented/Pro/d.jpg"], "status"]
    assert (untouched == "ok").all()


def test_near_duplicates_group_transitively_and_exact_ones_are_told_apart():
    files = file_table(
        [
            ("Original/Pro/a.jpg", "x", "0000000000000000", "ok"),
            ("Original/Pro/b.jpg", "y", "000000000000000f", "ok"),  # 4 bits from a
            ("Original/Pro/c.jpg", "z", "00000000000000ff", "ok"),  # 4 from b, 8 from a
            ("Original/Pro/d.jpg", "w", "ffffffff00000000", "ok"),
            ("Original/Pro/e.jpg", "w", "ffffffff00000000", "ok"),
            ("Original/Pro/f.jpg", "v", "ffffffffffffffff", "ok"),
            ("Original/Pro/g.jpg", "x", "0000000000000000", "quarantined"),
        ]
    )
    grouped = group_duplicates(pair_segmented_copies(files), 4, NO_OVERLAPS).set_index("path")
    assert grouped["group"].tolist()[:6] == [0, 0, 0, 1, 1, 2]
    assert grouped["duplicate_kind"].tolist()[:6] == ["near"] * 3 + ["exact"] * 2 + ["unique"]
    assert pd.isna(grouped.loc["Original/Pro/g.jpg", "group"])


def test_split_is_stratified_seeded_and_keeps_groups_whole():
    rng = np.random.default_rng(0)
    rows = []
    for label, count in (("Benign", 50), ("Early", 98), ("Pre", 96), ("Pro", 81)):
        for index in range(count):
            # Every seventh image has a byte-identical twin.
            digest = f"{label}{index - index % 2 if index % 7 == 0 else index}"
            rows.append((f"Original/{label}/{index:03}.jpg", digest, f"{rng.integers(2**63):016x}", "ok"))
    files = group_duplicates(pair_segmented_copies(file_table(rows)), 0, NO_OVERLAPS)
    split = assign_splits(files, SPLIT)
    assert split.groupby("group")["split"].nunique().max() == 1
    for label, members in split.groupby("label"):
        usable = len(members)
        for side, fraction in (("test", 0.2), ("val", 0.1)):
            assert abs((members["split"] == side).sum() - usable * fraction) <= 1, (label, side)
    assert split["split"].tolist() == assign_splits(files, SPLIT)["split"].tolist()
    assert split["split"].tolist() != assign_splits(files, {**SPLIT, "seed": 7})["split"].tolist()


def test_missing_root_and_wrong_layout_raise_one_clear_error(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"does not exist.*Original/\{Benign,Early,Pre,Pro\}"):
        scan_image_folder(ImageFolder(tmp_path / "nowhere"), INGESTION)
    (tmp_path / "images" / "benign").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match=r"has no class folder.*found \['images'\]"):
        scan_image_folder(ImageFolder(tmp_path), INGESTION)


def test_data_quality_counts_what_the_manifest_holds(defective_manifest):
    manifest, expected = defective_manifest
    report = summarise_data_quality(manifest, {}, {"root": "ALL"}, SPLIT)
    quarantined = sum(reason is not None for reason in expected.values())
    total = len(expected)
    assert report["files"] == {"total": total, "ok": total - quarantined, "quarantined": quarantined}
    assert report["quarantined"]["by_reason"]["hidden or system file"] == 4
    assert report["quarantined"]["by_reason"]["symbolic link (not followed)"] == 3
    usable_benign = manifest[(manifest["folder"] == "Original") & (manifest["label"] == "Benign")
                             & (manifest["status"] == "ok")]  # fmt: skip
    assert report["images_per_class_and_split"]["Benign"]["total"] == len(usable_benign)
    assert report["duplicates"]["exact_groups"] == 1
    assert report["duplicates"]["near_groups"] == 2
    assert report["duplicates"]["cross_label_groups"] == 1
    assert report["segmented"]["segmented_without_original"] == ["Segmented/Pro/WBC-Malignant-Pro-950.jpg"]
    assert report["synthetic"] is False
    assert (
        summarise_data_quality(manifest, {}, {"root": "ALL", "synthetic": True}, SPLIT)["synthetic"] is True
    )


def test_a_file_that_cannot_be_read_is_quarantined_not_fatal(tmp_path, monkeypatch):
    write_defective_dataset(tmp_path / "ALL")
    failing = "Original/Benign/WBC-Benign-001.jpg"
    read = image_io.read_regular_file

    def read_or_fail(root: Path, relative) -> bytes:
        if str(relative) == failing:  # as a dying disk or a revoked network share would answer
            raise OSError(5, "Input/output error", str(root / relative))
        return read(root, relative)

    monkeypatch.setattr(image_io, "read_regular_file", read_or_fail)
    manifest = ingest(tmp_path / "ALL").set_index("path")
    assert manifest.loc["Original/Benign/WBC-Benign-001.jpg", "reason"] == "unreadable file"
    assert manifest.loc["Segmented/Benign/WBC-Benign-001.jpg", "reason"] == "its Original is quarantined"
