"""Augmentation: extra views of the training split only (Mishra et al.'s "selective" augmentation).

Each view is a random geometric transform of one training image, stored as uint8 beside its source,
so validation and test images are never transformed and never lend a transform to training.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import keras
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from all_detection.core.arrays import release_pages, scratch_array
from all_detection.core.augmenter import PIXEL_RANGE, build_augmenter
from all_detection.core.model import DIHEDRAL_SYMMETRIES, DihedralView
from all_detection.core.progress import Progress

logger = logging.getLogger(__name__)


def count_views(labels: pd.Series, multiplier: dict[str, float], balance: bool, seed: int) -> np.ndarray:
    """How many views each training image gets, the image itself (view 0) included, in the rows' order.

    A class of n images with multiplier m ends with round(n * m) views exactly (halves round up): every
    image gets floor(m) views and a seeded random choice of the remaining round(n * m) - n * floor(m)
    images one more. With `balance`, m is replaced per class so that every class ends with the same
    total T = round(n_max * mean(m)), where n_max is the image count of the largest class and the mean
    is over the multipliers of the classes present; class c then gets T / n_c per image, split the same
    way. Every multiplier must be at least 1, since the source always stays in the set as view 0.
    """
    counts = labels.value_counts()
    missing = sorted(set(counts.index) - set(multiplier))
    if missing:
        raise ValueError(f"augmentation.multiplier has no entry for training classes {missing}")
    too_small = {label: multiplier[label] for label in counts.index if multiplier[label] < 1}
    if too_small:
        raise ValueError(f"augmentation.multiplier must be at least 1 (the source is view 0): {too_small}")
    if balance:
        mean_multiplier = np.mean([multiplier[label] for label in counts.index])
        target = _round_half_up(counts.max() * mean_multiplier)
        totals = {label: target for label in counts.index}
    else:
        totals = {label: _round_half_up(n * multiplier[label]) for label, n in counts.items()}
    rng = np.random.default_rng(seed)
    views = np.zeros(len(labels), dtype=np.int64)
    for label in sorted(totals):
        rows = np.flatnonzero((labels == label).to_numpy())
        whole, extra = divmod(totals[label], len(rows))
        views[rows] = whole
        views[rng.choice(rows, size=extra, replace=False)] += 1
    return views


def _round_half_up(value: float) -> int:
    # A small tolerance, so that 5 * 4.3 = 21.499999999999996 counts as the 21.5 it stands for.
    return math.floor(value + 0.5 + 1e-9)


def plan_views(index: pd.DataFrame, augmentation: dict[str, Any], seed: int) -> pd.DataFrame:
    """Which views each image gets, before any is made: one row per view, each image followed by its own.

    An image gets as many views as `count_views` gives it (`augmentation.multiplier` and `balance`),
    the image itself first (view 0), then random transforms. With `augmentation.dihedral_views` its
    first 8 views are its exact symmetries instead, in `DihedralView.of_symmetry` order (the image, its
    three quarter turns, the mirror images of those four: the views dihedral test-time augmentation
    averages over), and only views beyond the eighth are random transforms; every image then has at
    least 8. Columns: `view_id` (`<image_id>#<view>`), `source_id`, `label`, `label_index`, `group`,
    `view` (0 is the source itself), `symmetry` (0-7, the exact symmetry a view is, or -1 for a random
    view) and `source_row`, the image's row in `index` (and in its image stack).
    """
    views_per_image = count_views(index["label"], augmentation["multiplier"], augmentation["balance"], seed)
    exact = DIHEDRAL_SYMMETRIES if augmentation["dihedral_views"] else 1
    views_per_image = np.maximum(views_per_image, exact)
    source_rows = np.repeat(np.arange(len(index)), views_per_image)
    first_rows = np.cumsum(views_per_image) - views_per_image
    view = np.arange(len(source_rows)) - np.repeat(first_rows, views_per_image)
    sources = index.iloc[source_rows].reset_index(drop=True)
    return pd.DataFrame(
        {
            "view_id": sources["image_id"].astype(str) + "#" + pd.Series(view).astype(str),
            "source_id": sources["image_id"],
            "label": sources["label"],
            "label_index": sources["label_index"],
            "group": sources["group"],
            "view": view,
            "symmetry": np.where(view < exact, view, -1),
            "source_row": source_rows,
        }
    )


def render_views(
    images: np.ndarray, plan: pd.DataFrame, augmentation: dict[str, Any], seed: int
) -> np.ndarray:
    """The pixels of every planned view, in the plan's row order, as one uint8 stack.

    An exact symmetry (`symmetry` 0-7; 0 is the source image unchanged) is turned and mirrored by the
    same `DihedralView` layer test-time augmentation uses; the random views pass through
    `build_augmenter` in plan order, `augmentation.batch_size` at a time, rounded and clipped back to
    uint8, so no float copy of the whole set is ever held and a memory-mapped `images` is read a batch
    at a time; the views are written to a `scratch_array`, so they leave memory as they are made. The
    same plan, seed, batch size and Keras backend give byte-identical views (each backend has its own
    random streams).
    """
    source_rows, symmetry = plan["source_row"].to_numpy(), plan["symmetry"].to_numpy()
    augmented_views = scratch_array((len(plan), *images.shape[1:]), np.uint8)
    batch_size = augmentation["batch_size"]
    for number in range(DIHEDRAL_SYMMETRIES):
        exact = np.flatnonzero(symmetry == number)
        turn = DihedralView.of_symmetry(number)
        for start in range(0, len(exact), batch_size):
            rows = exact[start : start + batch_size]
            sources = np.asarray(images[source_rows[rows]])
            augmented_views[rows] = sources if number == 0 else keras.ops.convert_to_numpy(turn(sources))
            release_pages(images)
            release_pages(augmented_views)

    augmenter = build_augmenter(augmentation["transforms"], seed)
    transformed = np.flatnonzero(symmetry < 0)
    logger.info(
        "Augmenting %d images into %d views (%d exact symmetries, %d random)",
        len(np.unique(source_rows)), len(plan), len(plan) - len(transformed), len(transformed),
    )  # fmt: skip
    progress = Progress(logger, "transformed views", len(transformed))
    for start in range(0, len(transformed), batch_size):
        rows = transformed[start : start + batch_size]
        batch = np.asarray(images[source_rows[rows]], dtype=np.float32)
        views = keras.ops.clip(keras.ops.round(augmenter(batch, training=True)), *PIXEL_RANGE)
        augmented_views[rows] = keras.ops.convert_to_numpy(keras.ops.cast(views, "uint8"))
        release_pages(images)
        release_pages(augmented_views)
        progress.advance(len(rows))
    return augmented_views


def augment_training_split(
    train_images: np.ndarray, train_index: pd.DataFrame, augmentation: dict[str, Any], seed: int
) -> tuple[np.ndarray, pd.DataFrame]:
    """Every training image followed by its random views, as one uint8 stack and an index of its rows.

    `plan_views` decides the views (exact symmetries with `augmentation.dihedral_views`, and how many
    random ones per image, `multiplier` and `balance`), `render_views` makes them. Index columns:
    `view_id` (`<image_id>#<view>`), `source_id`, `label`, `label_index`, `group`, `view` and `symmetry`.
    """
    if len(train_images) != len(train_index):
        raise ValueError(f"{len(train_images)} training images but {len(train_index)} index rows")
    plan = plan_views(train_index, augmentation, seed)
    return render_views(train_images, plan, augmentation, seed), plan.drop(columns="source_row")


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
