"""Ingestion: every file under the dataset root, checked, de-duplicated and split before any augmentation.

The first node reads the image folder (the catalog's `raw_images`): it lists it without following
links and decodes every file once. The rest are pure functions of the resulting file table, so a
notebook or a test can call them on a hand-made frame; the segmentation agreement reads the folder
again for the pairs the table settled.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Any

import click
import cv2
import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from all_detection.core.progress import Progress
from all_detection.image_io import FILE_VERDICT_COLUMNS, ImageFolder, near_pairs
from all_detection.layout import (
    CLASSES,
    IMAGE_FOLDERS,
    OK,
    ORIGINAL_DIR,
    QUARANTINED,
    SEGMENTED_DIR,
    SPLITS,
    usable_originals,
)
from all_detection.overlap import field_features, overlapping_pairs
from all_detection.provenance import DIGESTED_COLUMNS, manifest_provenance
from all_detection.segmentation import blast_mask, dataset_mask, dice_and_iou

logger = logging.getLogger(__name__)

# The kinds of duplicate group `group_duplicates` forms, beside `unique` images.
DUPLICATE_KINDS = ("exact", "near", "overlap")

# Agreement below this is explained in the report rather than passed over.
LOW_AGREEMENT = 0.8

# Reasons that need the whole table to see.
CONFLICTING_LABELS = "byte-identical files under different labels"
NO_ORIGINAL = "Segmented image without an Original"
ORIGINAL_QUARANTINED = "its Original is quarantined"


class DatasetLayoutError(click.ClickException):
    """The dataset root is missing or is not laid out like the Kaggle download.

    A `ClickException`, so `kedro run` ends with this one message and exit code 1, not a traceback:
    the user's fix is a path, not a line of code.
    """


def expected_layout(root: str | Path) -> str:
    """The folder layout ingestion expects, for error messages and the README alike."""
    classes = ",".join(CLASSES)
    return (
        f"{root}/{ORIGINAL_DIR}/{{{classes}}}/*.jpg, with an optional "
        f"{root}/{SEGMENTED_DIR}/{{{classes}}}/*.jpg of the same file names "
        "(the layout of the Kaggle download, doi 10.34740/KAGGLE/DSV/2175623)"
    )


def check_dataset_layout(root: str | Path) -> Path:
    """Return the root as a path, or raise `DatasetLayoutError` naming it and the layout expected."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(
            f"Dataset root '{root}' does not exist or is not a folder. Expected {expected_layout(root)}. "
            'Point to it with --params "dataset.root=/path/to/ALL", or try the synthetic demo: '
            "kedro run --env demo"
        )
    if not any((root / ORIGINAL_DIR / label).is_dir() for label in CLASSES):
        found = sorted(entry.name for entry in root.iterdir())[:20]
        raise DatasetLayoutError(
            f"Dataset root '{root}' has no class folder. Expected {expected_layout(root)}; "
            f"found {found or 'an empty folder'}."
        )
    return root


def scan_image_folder(raw_images: ImageFolder, ingestion: dict[str, Any]) -> pd.DataFrame:
    """Record every file in the image folder, one row each, with its label, hash and verdict.

    Links are recorded and never followed; hidden, system and misplaced files are recorded and
    quarantined; every other file is decoded in full by `decode_rgb`, the same gate inference uses.
    The perceptual hash of each usable image is kept for near-duplicate grouping.
    """
    root = check_dataset_layout(raw_images.root)
    entries = raw_images.files()
    logger.info("Ingesting %d files under %s", len(entries), root)
    progress = Progress(logger, "read files", len(entries))
    records = []
    for relative in entries:
        parts = relative.parts
        known_place = len(parts) == 3 and parts[0] in IMAGE_FOLDERS and parts[1] in CLASSES
        place = {"folder": parts[0], "label": parts[1]} if known_place else {"folder": None, "label": None}
        records.append({**raw_images.inspect(relative, ingestion, known_place), **place})
        progress.advance()
    return pd.DataFrame.from_records(records, columns=_INVENTORY_COLUMNS)


_INVENTORY_COLUMNS = ["path", "folder", "label", *FILE_VERDICT_COLUMNS[1:]]


def _quarantine(files: pd.DataFrame, where: pd.Series, reason: str, detail: pd.Series | str) -> pd.DataFrame:
    files = files.copy()
    files.loc[where, "status"] = QUARANTINED
    files.loc[where, "reason"] = reason
    files.loc[where, "detail"] = detail if isinstance(detail, str) else detail[where]
    return files


def quarantine_conflicting_duplicates(files: pd.DataFrame) -> pd.DataFrame:
    """Quarantine every copy of an image whose identical bytes carry two or more different labels.

    Neither label can be trusted, so both sides go. Only Originals count: Segmented copies are
    derived images whose emptiest versions (an all-black mask) are byte-identical across classes.
    """
    originals = files[usable_originals(files)]
    labels_per_hash = originals.groupby("sha256")["label"].agg(lambda labels: sorted(set(labels)))
    conflicting = labels_per_hash[labels_per_hash.map(len) > 1]
    where = usable_originals(files) & files["sha256"].isin(conflicting.index)
    detail = files["sha256"].map(lambda digest: f"labels {', '.join(conflicting.get(digest, []))}")
    return _quarantine(files, where, CONFLICTING_LABELS, detail)


def pair_segmented_copies(files: pd.DataFrame) -> pd.DataFrame:
    """Link each Original to its Segmented copy of the same class and name, in a `counterpart` column.

    A Segmented file with no Original is quarantined, and so is the Segmented copy of a quarantined
    Original: it is the same picture, so it cannot be trusted or split apart from it.
    """
    files = files.copy()
    key = files["label"].astype("string") + "/" + files["path"].map(lambda path: PurePosixPath(path).name)
    originals = files["folder"] == ORIGINAL_DIR
    segmented = files["folder"] == SEGMENTED_DIR
    original_by_key = pd.Series(files.loc[originals, "path"].values, index=key[originals])
    segmented_by_key = pd.Series(files.loc[segmented, "path"].values, index=key[segmented])
    counterpart = key.map(segmented_by_key).where(originals, key.map(original_by_key))
    files["counterpart"] = counterpart.where(originals | segmented).astype("string")

    status_by_path = files.set_index("path")["status"]
    counterpart_status = files["counterpart"].map(status_by_path)
    orphan = segmented & (files["status"] == OK) & files["counterpart"].isna()
    files = _quarantine(files, orphan, NO_ORIGINAL, "no Original image of the same class and name")
    twin_quarantined = segmented & (files["status"] == OK) & (counterpart_status == QUARANTINED)
    return _quarantine(files, twin_quarantined, ORIGINAL_QUARANTINED, files["counterpart"])


def find_overlapping_fields(
    files: pd.DataFrame, raw_images: ImageFolder, ingestion: dict[str, Any], corners: dict[str, Any]
) -> pd.DataFrame:
    """Pairs of usable Originals that show the same field of a smear shifted (`overlap.overlapping_pairs`:
    thumbnail neighbours checked by ORB keypoints and RANSAC), one row each: `first` and `second`
    (paths, first < second) and `shared_keypoints`. `ingestion.overlap.candidates: 0` looks for none.
    Keypoints in the corner squares (`preprocessing.corners.fraction`, the scale-bar label's) are ignored.
    """
    usable = files[usable_originals(files)].sort_values("path")
    overlap = ingestion["overlap"]
    columns = {"first": pd.Series(dtype="string"), "second": pd.Series(dtype="string"),
               "shared_keypoints": pd.Series(dtype="int64")}  # fmt: skip
    if not overlap["candidates"]:
        return pd.DataFrame(columns)
    progress = Progress(logger, "images searched for overlapping fields", len(usable))
    features = []
    for path in usable["path"]:
        features.append(
            field_features(raw_images.read_rgb(path, ingestion), overlap["keypoints"], corners["fraction"])
        )
        progress.advance()
    paths = usable["path"].to_numpy()
    pairs = overlapping_pairs(features, overlap)
    logger.info("Overlapping fields: %d pairs of images show the same field shifted", len(pairs))
    return pd.DataFrame(
        {
            "first": pd.Series([paths[first] for first, _, _ in pairs], dtype="string"),
            "second": pd.Series([paths[second] for _, second, _ in pairs], dtype="string"),
            "shared_keypoints": pd.Series([shared for _, _, shared in pairs], dtype="int64"),
        }
    )


def group_duplicates(
    files: pd.DataFrame, near_duplicate_max_bits: int, overlapping_fields: pd.DataFrame
) -> pd.DataFrame:
    """Give each usable Original a duplicate `group`: byte-identical, perceptually near and overlapping
    images (one field, shifted: `overlapping_fields`) share one.

    Near duplicates are images whose 64-bit perceptual hashes differ in at most `near_duplicate_max_bits`
    bits (re-encoded, resized or slightly recoloured copies); byte-identical files differ in none.
    Groups are closed transitively, numbered from 0 in path order, and `duplicate_kind` says `exact`
    (all members byte-identical), `near` (joined by perceptual hashes alone), `overlap` (joined by an
    overlapping field that no hash saw) or `unique`. Segmented copies take their Original's group.
    """
    usable = files[usable_originals(files)].sort_values("path")
    hashes = np.array([int(value, 16) for value in usable["phash"]], dtype=np.uint64)
    first, second = near_pairs(hashes, near_duplicate_max_bits)
    position = pd.Series(np.arange(len(usable)), index=usable["path"].to_numpy())
    known = overlapping_fields["first"].isin(position.index) & overlapping_fields["second"].isin(
        position.index
    )
    shifted_first = position[overlapping_fields.loc[known, "first"]].to_numpy()
    shifted_second = position[overlapping_fields.loc[known, "second"]].to_numpy()
    hashed = _components(first, second, len(usable))
    joined = _components(np.r_[first, shifted_first], np.r_[second, shifted_second], len(usable))
    # Renumber so group ids follow path order, whatever order the components came in.
    group = pd.Series(joined, index=usable.index).map(
        {component: number for number, component in enumerate(dict.fromkeys(joined))}
    )
    sizes = group.map(group.value_counts())
    single_bytes = usable.groupby(group)["sha256"].transform("nunique") == 1
    hash_groups = pd.Series(hashed, index=usable.index).groupby(group).transform("nunique")
    kind = np.where(
        sizes == 1, "unique", np.where(hash_groups > 1, "overlap", np.where(single_bytes, "exact", "near"))
    )
    files = files.copy()
    files["group"] = pd.Series(pd.NA, index=files.index, dtype="Int64")
    files["duplicate_kind"] = pd.Series(pd.NA, index=files.index, dtype="string")
    files.loc[usable.index, "group"] = group
    files.loc[usable.index, "duplicate_kind"] = kind
    return _inherit_from_originals(files, ["group", "duplicate_kind"])


def _components(first: np.ndarray, second: np.ndarray, count: int) -> np.ndarray:
    links = coo_matrix((np.ones(len(first)), (first, second)), shape=(count, count))
    return connected_components(links, directed=False)[1]


def _inherit_from_originals(files: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Copy columns from each usable Original onto its usable Segmented copy."""
    by_path = files.set_index("path")[columns]
    copies = (files["folder"] == SEGMENTED_DIR) & (files["status"] == OK)
    for column in columns:
        files.loc[copies, column] = files.loc[copies, "counterpart"].map(by_path[column]).to_numpy()
    return files


def assign_splits(files: pd.DataFrame, split: dict[str, Any]) -> pd.DataFrame:
    """Split usable images into train/val/test per class, whole duplicate groups on one side, seeded.

    Each class gets `round(n * test_fraction)` test and `round(n * val_fraction)` validation images
    of its `n` usable Originals, so each share is within half an image of the request unless a
    duplicate group is too big to fit. Groups are placed in a seeded random order, largest first,
    each into the split furthest below its target for the group's class; the rest train. A group
    whose images carry different labels (a near duplicate relabelled) counts for its majority class.
    Segmented copies follow their Original. Quarantined files get no split.
    """
    usable = files[usable_originals(files)]
    rng = np.random.default_rng(split["seed"])
    groups = usable.groupby("group")["label"].agg(lambda labels: labels.mode().iloc[0]).rename("label")
    sizes = usable.groupby("group").size().rename("size")
    order = pd.concat([groups, sizes], axis=1)
    order["draw"] = rng.permutation(len(order))
    order = order.sort_values(["size", "draw"], ascending=[False, True])

    class_counts = usable["label"].value_counts()
    targets = {
        label: {
            "test": round(count * split["test_fraction"]),
            "val": round(count * split["val_fraction"]),
        }
        for label, count in class_counts.items()
    }
    placed = {label: {"test": 0, "val": 0} for label in targets}
    split_of_group = {}
    for group, (label, size) in order[["label", "size"]].iterrows():
        room = {side: targets[label][side] - placed[label][side] for side in ("test", "val")}
        fitting = [side for side in ("test", "val") if room[side] >= size]
        side = max(fitting, key=lambda name: room[name]) if fitting else "train"
        if side != "train":
            placed[label][side] += size
        split_of_group[group] = side

    files = files.copy()
    files["split"] = pd.Series(pd.NA, index=files.index, dtype="string")
    files.loc[usable.index, "split"] = usable["group"].map(split_of_group)
    return _inherit_from_originals(files, ["split"])


MANIFEST_COLUMNS = [
    "path", "label", "status", "reason", "sha256", "group", "split",
    "folder", "detail", "counterpart", "duplicate_kind",
    "size_bytes", "width", "height", "file_format", "file_mode", "phash",
]  # fmt: skip


def build_manifest(files: pd.DataFrame) -> pd.DataFrame:
    """Order the file table into the manifest: contract columns first, one row per file, sorted by path."""
    manifest = files.sort_values("path").reset_index(drop=True)[MANIFEST_COLUMNS]
    for column in ("width", "height", "size_bytes", "group"):
        manifest[column] = manifest[column].astype("Int64")
    text_columns = [
        column for column in MANIFEST_COLUMNS if column not in ("width", "height", "size_bytes", "group")
    ]
    return manifest.astype(dict.fromkeys(text_columns, "string"))


def measure_segmentation_agreement(
    manifest: pd.DataFrame,
    raw_images: ImageFolder,
    preprocessing: dict[str, Any],
    ingestion: dict[str, Any],
) -> dict[str, Any]:
    """Dice and IoU per class of the project's blast masks against the dataset's own `Segmented/` masks.

    Only usable Originals with a usable Segmented twin count. Besides the means and counts, each class
    reports the mean stained fraction of both masks, and a class whose mean Dice is below 0.8 gets a
    plain-language note on why (most often: the dataset's masks there are nearly empty).
    """
    by_path = manifest.set_index("path")
    pairs = manifest[
        usable_originals(manifest)
        & manifest["counterpart"].notna()
        & manifest["counterpart"].map(lambda twin: pd.notna(twin) and by_path.at[twin, "status"] == OK)
    ]
    min_value = preprocessing["agreement"]["dataset_mask_min_value"]
    agreement: dict[str, Any] = {}
    for label in [label for label in CLASSES if label in set(pairs["label"])]:
        scores = []
        for original, twin in pairs.loc[pairs["label"] == label, ["path", "counterpart"]].itertuples(
            index=False
        ):
            ours = blast_mask(raw_images.read_rgb(original, ingestion), preprocessing["segmentation"])
            theirs = dataset_mask(raw_images.read_rgb(twin, ingestion), min_value)
            if theirs.shape != ours.shape:
                theirs = (
                    cv2.resize(theirs.astype(np.uint8), ours.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
                )
            scores.append((*dice_and_iou(ours, theirs), ours.mean(), theirs.mean()))
        dice, iou, ours_fraction, theirs_fraction = np.mean(scores, axis=0)
        agreement[label] = {
            "dice_mean": round(float(dice), 4),
            "iou_mean": round(float(iou), 4),
            "n": len(scores),
            "project_mask_fraction": round(float(ours_fraction), 4),
            "dataset_mask_fraction": round(float(theirs_fraction), 4),
        }
        if dice < LOW_AGREEMENT:
            agreement[label]["note"] = _why_agreement_is_low(ours_fraction, theirs_fraction)
    return agreement


def _why_agreement_is_low(ours: float, theirs: float) -> str:
    if theirs < 0.02:
        return (
            f"the dataset's own masks are nearly empty here ({theirs:.1%} of pixels; ours {ours:.1%}): cells "
            "stained in hues outside the threshold band (in the ALL dataset, Pro's pink-lilac blasts) are "
            "missed, and Dice on near-empty masks rests on a few pixels"
        )
    if ours < 0.5 * theirs:
        return f"our masks cover much less than the dataset's ({ours:.1%} against {theirs:.1%} of pixels)"
    return f"the masks differ in where they put the cells ({ours:.1%} against {theirs:.1%} of pixels)"


def describe_data(manifest: pd.DataFrame, dataset: dict[str, Any]) -> dict[str, Any]:
    """What a run trains and tests on, for its MLflow record: the manifest's digest and counts
    (`data.*` parameters), and its rows as the run's dataset, named after the image folder."""
    return {
        "params": manifest_provenance(manifest),
        "source": str(dataset["root"]),
        "rows": manifest[DIGESTED_COLUMNS],
    }


def summarise_data_quality(
    manifest: pd.DataFrame,
    segmentation_agreement: dict[str, Any],
    dataset: dict[str, Any],
    split: dict[str, Any],
) -> dict:
    """data_quality.json: counts per class and split, quarantined files by reason, duplicate groups,
    Segmented gaps, and the agreement of the project's masks with the dataset's (`segmentation_agreement`,
    empty without `Segmented/`).

    Also logs a short table a person can read at the end of the run.
    """
    originals = manifest[usable_originals(manifest)]
    per_class = pd.crosstab(originals["label"], originals["split"]).reindex(
        index=[label for label in CLASSES if label in set(originals["label"])],
        columns=list(SPLITS),
        fill_value=0,
    )
    per_class["total"] = per_class.sum(axis=1)
    quarantined = manifest[manifest["status"] == QUARANTINED]
    grouped = originals[originals["duplicate_kind"].isin(DUPLICATE_KINDS)]
    duplicate_groups = [
        {
            "group": int(group),
            "kind": members["duplicate_kind"].iloc[0],
            "split": members["split"].iloc[0],
            "labels": sorted(set(members["label"])),
            "paths": members["path"].tolist(),
        }
        for group, members in grouped.groupby("group")
    ]
    segmented = manifest[manifest["folder"] == SEGMENTED_DIR]
    report = {
        "dataset_root": str(dataset["root"]),
        "synthetic": bool(dataset.get("synthetic", False)),
        "files": {
            "total": len(manifest),
            "ok": int((manifest["status"] == OK).sum()),
            "quarantined": len(quarantined),
        },
        "images_per_class_and_split": {
            label: row.to_dict() for label, row in per_class.astype(int).iterrows()
        },
        "split": {
            "requested": {"test_fraction": split["test_fraction"], "val_fraction": split["val_fraction"]},
            "seed": split["seed"],
            "unit": "duplicate group of Original images; Segmented copies follow their Original",
        },
        "quarantined": {
            "by_reason": quarantined["reason"].value_counts().sort_index().to_dict(),
            "files": quarantined[["path", "reason", "detail"]].to_dict(orient="records"),
        },
        "duplicates": {
            "exact_groups": sum(group["kind"] == "exact" for group in duplicate_groups),
            "near_groups": sum(group["kind"] == "near" for group in duplicate_groups),
            "overlap_groups": sum(group["kind"] == "overlap" for group in duplicate_groups),
            "images_in_groups": len(grouped),
            "images_in_overlap_groups": int((grouped["duplicate_kind"] == "overlap").sum()),
            "cross_label_groups": sum(len(group["labels"]) > 1 for group in duplicate_groups),
            "groups": duplicate_groups,
        },
        "segmented": {
            "present": bool(len(segmented)),
            "paired_originals": int(originals["counterpart"].notna().sum()),
            "originals_without_segmented": originals.loc[originals["counterpart"].isna(), "path"].tolist(),
            "segmented_without_original": segmented.loc[segmented["reason"] == NO_ORIGINAL, "path"].tolist(),
        },
        "segmentation_agreement": segmentation_agreement,
    }
    _log_summary(report, per_class)
    return _plain(report)


def _log_summary(report: dict, per_class: pd.DataFrame) -> None:
    files, duplicates = report["files"], report["duplicates"]
    logger.info(
        "Ingested %d files: %d ok, %d quarantined\n%s",
        files["total"], files["ok"], files["quarantined"], per_class.to_string(),
    )  # fmt: skip
    for reason, count in report["quarantined"]["by_reason"].items():
        logger.warning("  quarantined %d x %s", count, reason)
    logger.info(
        "Duplicate groups: %d exact, %d near, %d overlapping fields (%d images, %d with conflicting "
        "labels); %d Originals without a Segmented copy",
        duplicates["exact_groups"], duplicates["near_groups"], duplicates["overlap_groups"],
        duplicates["images_in_groups"],
        duplicates["cross_label_groups"], len(report["segmented"]["originals_without_segmented"]),
    )  # fmt: skip


def _plain(value: Any) -> Any:
    """Turn pandas/numpy scalars and missing values into what JSON can hold."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    return value
