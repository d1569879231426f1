"""Preprocessing: each usable image, segmented and resized once into compact uint8 stacks per split.

`all_detection.segmentation.model_input` is the one definition of what the network sees for an image,
used here for the training, validation and test splits and again by inference on new images. The nodes
read image files named by the manifest (decoding them with the same gate as ingestion); everything else
is pure array work.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from all_detection.core.progress import Progress
from all_detection.image_io import decode_limits, decode_rgb
from all_detection.layout import CLASSES, OK, SPLITS, input_channels, usable_originals
from all_detection.segmentation import (
    blast_mask,
    dataset_mask,
    dice_and_iou,
    dim_background,
    model_input,
    segment,
    stained_bounding_box,
)

logger = logging.getLogger(__name__)

# Agreement below this is explained in the report rather than passed over.
LOW_AGREEMENT = 0.8


def _read_rgb(root: Path, relative_path: str, ingestion: dict[str, Any]) -> np.ndarray:
    """Decode an image ingestion accepted, through the same gate and limits (the file may have changed)."""
    return decode_rgb((root / relative_path).read_bytes(), **decode_limits(ingestion)).rgb


def prepare_model_inputs(
    manifest: pd.DataFrame, dataset: dict[str, Any], preprocessing: dict[str, Any], ingestion: dict[str, Any]
) -> tuple[np.ndarray, pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Stack the usable Original images of each split as uint8 (n, size, size, channels) with an index.

    Returns train, validation and test stacks, each followed by its index in the same row order:
    `image_id` (the manifest path), `label`, `label_index` (position in `CLASSES`), `group`, `split`,
    the stained cells' bounding box `bbox_x0, bbox_y0, bbox_x1, bbox_y1` at the image's own resolution
    (-1 when nothing is stained) and `stained_fraction`. Each image is decoded once, here, so that
    training never decodes a JPEG per epoch.
    """
    root = Path(dataset["root"])
    usable = manifest[usable_originals(manifest)]
    size, channels = preprocessing["image_size"], input_channels(preprocessing["input_mode"])
    progress, outputs = Progress(logger, "prepared images", len(usable)), []
    for split in SPLITS:
        rows = usable[usable["split"] == split].sort_values("path")
        stack = np.zeros((len(rows), size, size, channels), dtype=np.uint8)
        boxes, fractions = [], []
        for position, path in enumerate(rows["path"]):
            stack[position], mask = model_input(_read_rgb(root, path, ingestion), preprocessing)
            boxes.append(stained_bounding_box(mask) or (-1, -1, -1, -1))
            fractions.append(float(mask.mean()))
            progress.advance()
        index = pd.DataFrame(
            {
                "image_id": rows["path"].to_numpy(),
                "label": rows["label"].to_numpy(),
                "label_index": rows["label"].map(CLASSES.index).astype("int64").to_numpy(),
                "group": rows["group"].to_numpy(),
                "split": split,
            }
        )
        index[["bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]] = np.array(boxes, dtype=np.int64).reshape(-1, 4)
        index["stained_fraction"] = fractions
        logger.info("%s: %d images, %s uint8 (%.1f MB)", split, len(rows), stack.shape, stack.nbytes / 2**20)
        outputs += [stack, index]
    return tuple(outputs)


def measure_segmentation_agreement(
    manifest: pd.DataFrame, dataset: dict[str, Any], preprocessing: dict[str, Any], ingestion: dict[str, Any]
) -> dict[str, Any]:
    """Dice and IoU per class of the project's blast masks against the dataset's own `Segmented/` masks.

    Only usable Originals with a usable Segmented twin count. Besides the means and counts, each class
    reports the mean stained fraction of both masks, and a class whose mean Dice is below 0.8 gets a
    plain-language note on why (most often: the dataset's masks there are nearly empty).
    """
    root = Path(dataset["root"])
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
            ours = blast_mask(_read_rgb(root, original, ingestion), preprocessing["segmentation"])
            theirs = dataset_mask(_read_rgb(root, twin, ingestion), min_value)
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


def add_segmentation_agreement(data_quality: dict[str, Any], agreement: dict[str, Any]) -> dict[str, Any]:
    """The ingestion report with `segmentation_agreement` added (empty when there is no `Segmented/`)."""
    return {**data_quality, "segmentation_agreement": agreement}


def plot_segmentation_examples(
    manifest: pd.DataFrame, dataset: dict[str, Any], preprocessing: dict[str, Any], ingestion: dict[str, Any]
) -> Figure:
    """A figure with one row per class: original, blast mask, segmented and masked, first usable image."""
    root = Path(dataset["root"])
    usable = manifest[usable_originals(manifest)].sort_values("path")
    labels = [label for label in CLASSES if label in set(usable["label"])]
    figure, axes = plt.subplots(len(labels), 4, figsize=(10, 2.6 * len(labels)), squeeze=False)
    masked = preprocessing["masked"]
    for row, label in zip(axes, labels, strict=True):
        path = usable.loc[usable["label"] == label, "path"].iloc[0]
        rgb = _read_rgb(root, path, ingestion)
        mask = blast_mask(rgb, preprocessing["segmentation"])
        panels = {
            f"{label}: original": rgb,
            f"blast mask ({mask.mean():.1%})": mask,
            "segmented": segment(rgb, mask),
            "masked": dim_background(rgb, mask, masked["dilation_px"], masked["background_level"]),
        }
        for axis, (title, image) in zip(row, panels.items(), strict=True):
            axis.imshow(image, cmap="gray" if image.ndim == 2 else None)
            axis.set_title(title, fontsize=9)
            axis.axis("off")
    figure.suptitle("HSV segmentation per class", fontsize=11)
    figure.tight_layout()
    return figure
