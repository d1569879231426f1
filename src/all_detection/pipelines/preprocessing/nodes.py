"""Preprocessing: each usable image, segmented and resized once into compact uint8 stacks per split.

`all_detection.segmentation.model_input` is the one definition of what the network sees for an image,
used here for the training, validation and test splits and again by inference on new images. The nodes
read the image files the manifest names from the image folder (the catalog's `raw_images`, through the
same gate as ingestion); everything else is pure array work.
"""

from __future__ import annotations

import logging
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from all_detection.core.progress import Progress
from all_detection.core.stain import stain_reference
from all_detection.image_io import ImageFolder
from all_detection.layout import CLASSES, SPLITS, input_channels, usable_originals
from all_detection.segmentation import (
    blast_mask,
    dim_background,
    model_input,
    segment,
    stained_bounding_box,
)

logger = logging.getLogger(__name__)


def prepare_model_inputs(
    manifest: pd.DataFrame,
    raw_images: ImageFolder,
    preprocessing: dict[str, Any],
    ingestion: dict[str, Any],
) -> tuple[np.ndarray, pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Stack the usable Original images of each split as uint8 (n, size, size, channels) with an index.

    Returns train, validation and test stacks, each followed by its index in the same row order:
    `image_id` (the manifest path), `label`, `label_index` (position in `CLASSES`), `group`, `split`,
    the stained cells' bounding box `bbox_x0, bbox_y0, bbox_x1, bbox_y1` at the image's own resolution
    (-1 when nothing is stained) and `stained_fraction`. Each image is decoded once, here, so that
    training never decodes a JPEG per epoch.
    """
    usable = manifest[usable_originals(manifest)]
    size, channels = preprocessing["image_size"], input_channels(preprocessing["input_mode"])
    progress, outputs = Progress(logger, "prepared images", len(usable)), []
    for split in SPLITS:
        rows = usable[usable["split"] == split].sort_values("path")
        stack = np.zeros((len(rows), size, size, channels), dtype=np.uint8)
        boxes, fractions = [], []
        for position, path in enumerate(rows["path"]):
            stack[position], mask = model_input(raw_images.read_rgb(path, ingestion), preprocessing)
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


def measure_training_stain(train_images: np.ndarray) -> dict[str, Any]:
    """The training images' stain (`core.stain.stain_reference`): the mean CIELAB means and standard
    deviations every image is normalised to with `preprocessing.stain_normalisation: reinhard`, and
    their spread across images, the range stain augmentation draws from. Measured on the training
    split only, so no validation or test image shapes the model."""
    reference = stain_reference(train_images)
    logger.info(
        "Training images' stain (CIELAB): mean %s, sd %s, over %d images",
        reference["lab_mean"], reference["lab_sd"], reference["images"],
    )  # fmt: skip
    return reference


def plot_segmentation_examples(
    manifest: pd.DataFrame,
    raw_images: ImageFolder,
    preprocessing: dict[str, Any],
    ingestion: dict[str, Any],
) -> Figure:
    """A figure with one row per class: original, blast mask, segmented and masked, first usable image."""
    usable = manifest[usable_originals(manifest)].sort_values("path")
    labels = [label for label in CLASSES if label in set(usable["label"])]
    figure, axes = plt.subplots(len(labels), 4, figsize=(10, 2.6 * len(labels)), squeeze=False)
    masked = preprocessing["masked"]
    for row, label in zip(axes, labels, strict=True):
        path = usable.loc[usable["label"] == label, "path"].iloc[0]
        rgb = raw_images.read_rgb(path, ingestion)
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
