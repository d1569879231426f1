"""Augmentation: extra views of the training split only (Mishra et al.'s "selective" augmentation).

Each view is a random geometric transform of one training image, stored as uint8 beside its source,
so validation and test images are never transformed and never lend a transform to training.
"""

from __future__ import annotations

import logging
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from all_detection.core.augmenter import plan_views, render_views

logger = logging.getLogger(__name__)


def augment_training_split(
    train_images: np.ndarray,
    train_index: pd.DataFrame,
    stain_reference: dict[str, Any],
    augmentation: dict[str, Any],
    seed: int,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Every training image followed by its random views, as one uint8 stack and an index of its rows.

    `plan_views` decides the views (exact symmetries with `augmentation.dihedral_views`, and how many
    random ones per image, `multiplier` and `balance`), `render_views` makes them, with a random stain
    around the training images' own (`stain_reference`) when `augmentation.transforms.stain` asks for
    one. Index columns: `view_id` (`<image_id>#<view>`), `source_id`, `label`, `label_index`, `group`,
    `view` and `symmetry`.
    """
    if len(train_images) != len(train_index):
        raise ValueError(f"{len(train_images)} training images but {len(train_index)} index rows")
    plan = plan_views(train_index, augmentation, seed)
    views = render_views(train_images, plan, augmentation, seed, stain_reference)
    return views, plan.drop(columns="source_row")


def plot_augmentation_examples(
    augmented_train_images: np.ndarray, augmented_train_index: pd.DataFrame, examples_per_class: int
) -> Figure:
    """One row per class: a source image, then up to `examples_per_class` of its random views.

    The source shown is the class's first with the most views. Of a 6-channel (dual) stack the
    original half (channels 0-2) is shown; of a stack with fewer than 3 channels, the first in grey.
    """
    labels = list(dict.fromkeys(augmented_train_index["label"]))
    columns = 1 + examples_per_class
    figure, axes = plt.subplots(
        len(labels), columns, figsize=(1.8 * columns, 1.9 * len(labels)), squeeze=False
    )
    for axes_row, label in zip(axes, labels, strict=True):
        of_class = augmented_train_index[augmented_train_index["label"] == label]
        source_id = of_class.groupby("source_id", sort=False).size().idxmax()
        rows = np.flatnonzero((augmented_train_index["source_id"] == source_id).to_numpy())[:columns]
        for ax in axes_row:
            ax.set_axis_off()
        for ax, row in zip(axes_row, rows, strict=False):
            image = np.asarray(augmented_train_images[row])
            shown = image[..., :3] if image.shape[-1] >= 3 else image[..., 0]
            ax.imshow(shown, cmap=None if shown.ndim == 3 else "gray", vmin=0, vmax=255)
            view = int(augmented_train_index["view"].iloc[row])
            ax.set_title("source" if view == 0 else f"view {view}", fontsize=8)
        axes_row[0].text(
            -0.08, 0.5, label, transform=axes_row[0].transAxes, rotation=90,
            ha="right", va="center", fontsize=10,
        )  # fmt: skip
    figure.suptitle("Training images and their random views", fontsize=10)
    figure.tight_layout()
    return figure
