"""Protocol comparison: the same model trained and tested under the paper's protocol and under the
project's leakage-free one, so the difference the order of augmentation and splitting makes is measured.

Mishra et al. augmented every image first and split the augmented set at random, so views of one image
sat in training and in validation; the project splits first and augments only the training split.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.model_selection import train_test_split

from all_detection.core.augmenter import plan_views, render_views
from all_detection.studies.figures import plot_interval_comparison
from all_detection.studies.nodes import HEADLINE_METRICS, headline, pooled_images, pooled_index

PROTOCOLS = {
    "paper": (
        "Mishra et al.: every usable image augmented to the Table 2 size, then the views split at random "
        "(stratified by class), so views of one image sit on both sides of the split."
    ),
    "leakage_free": (
        "This project's: images split first (stratified, duplicate groups kept together), only the "
        "training split augmented; validation and test images never seen in any form."
    ),
}


def augment_then_split(
    train_images: np.ndarray,
    train_index: pd.DataFrame,
    val_images: np.ndarray,
    val_index: pd.DataFrame,
    test_images: np.ndarray,
    test_index: pd.DataFrame,
    stain_reference: dict[str, Any],
    augmentation: dict[str, Any],
    split: dict[str, Any],
) -> tuple[np.ndarray, pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray, pd.DataFrame]:
    """The paper's protocol: all usable images augmented together, then their views split at random.

    The images of the three splits are pooled and augmented with the same settings as the training
    split (by default each image's 8 exact symmetries; with `augmentation.dihedral_views: false` the
    paper's random transforms, `augmentation.multiplier` views per image, its ~4.3, the source counting
    as view 0), then the views are divided at random, stratified by class, into the same test and validation
    fractions of views as `split` asks of images. Returns training, validation and test stacks with
    their indices; each view's row keeps its `source_id` and duplicate `group`, so the leakage this
    causes is measured downstream, and its `image_id` is the view's own id. The views are planned and
    split first and made once, in split order, so the three stacks are parts of one array. A random
    stain (`augmentation.transforms.stain`) is drawn around the training split's stain (`stain_reference`).
    """
    seed = split["seed"]
    plan = plan_views(pooled_index(train_index, val_index, test_index), augmentation, seed)
    rest, test_rows = train_test_split(
        plan.index.to_numpy(), test_size=split["test_fraction"], stratify=plan["label"], random_state=seed
    )
    train_rows, val_rows = train_test_split(
        rest,
        test_size=split["val_fraction"] / (1 - split["test_fraction"]),
        stratify=plan["label"].iloc[rest],
        random_state=seed,
    )
    parts = [np.sort(rows) for rows in (train_rows, val_rows, test_rows)]
    plan = plan.iloc[np.concatenate(parts)].reset_index(drop=True)
    pooled = pooled_images(train_images, val_images, test_images)
    views = render_views(pooled, plan, augmentation, seed, stain_reference)
    view_index = plan.drop(columns="source_row").assign(image_id=plan["view_id"])
    outputs: list[Any] = []
    start = 0
    for rows in parts:
        stop = start + len(rows)
        outputs += [views[start:stop], view_index.iloc[start:stop].reset_index(drop=True)]
        start = stop
    return tuple(outputs)


def accuracy_by_view(test_predictions: pd.DataFrame, test_index: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Test accuracy on unaugmented images (view 0, or an index without views) and on random views.

    Under the paper's protocol most test images are transformed views, a harder and different test
    set from the leakage-free protocol's untouched images; this separates that shift from leakage.
    """
    if "view" in test_index:
        view = test_predictions["image_id"].map(test_index.set_index("image_id")["view"])
    else:
        view = pd.Series(0, index=test_predictions.index)
    correct = test_predictions["correct"].astype(bool)
    breakdown = {}
    for name, rows in (("unaugmented", view == 0), ("augmented", view != 0)):
        breakdown[name] = {
            "n": int(rows.sum()),
            "accuracy": round(float(correct[rows].mean()), 6) if rows.any() else None,
        }
    return breakdown


def compare_protocols(
    paper_metrics: dict[str, Any],
    paper_test_predictions: pd.DataFrame,
    paper_test_index: pd.DataFrame,
    leakage_free_metrics: dict[str, Any],
    leakage_free_test_predictions: pd.DataFrame,
    leakage_free_test_index: pd.DataFrame,
) -> dict[str, Any]:
    """protocol_comparison.json: each protocol's description, test and validation accuracy and macro F1
    with their bootstrap intervals, test accuracy on unaugmented images and on random views, measured
    leakage and split sizes, and the paper's excess over the leakage-free protocol (positive: the
    paper's protocol reports a higher number)."""
    protocols = {}
    for name, metrics, predictions, index in (
        ("paper", paper_metrics, paper_test_predictions, paper_test_index),
        ("leakage_free", leakage_free_metrics, leakage_free_test_predictions, leakage_free_test_index),
    ):
        protocols[name] = {
            "description": PROTOCOLS[name],
            **headline(metrics),
            "test_accuracy_by_view": accuracy_by_view(predictions, index),
            "split_sizes": metrics["run"]["split_sizes"],
            "leakage": metrics["run"]["leakage"],
        }
    paper, leakage_free = protocols["paper"], protocols["leakage_free"]
    excess = {
        f"{split}_{metric}": _difference(paper[split][metric], leakage_free[split][metric])
        for split in ("test", "val")
        for metric in HEADLINE_METRICS
    }
    excess["test_accuracy_unaugmented"] = _difference(
        paper["test_accuracy_by_view"]["unaugmented"]["accuracy"],
        leakage_free["test_accuracy_by_view"]["unaugmented"]["accuracy"],
    )
    return {"protocols": protocols, "paper_minus_leakage_free": excess}


def _difference(paper: float | None, leakage_free: float | None) -> float | None:
    return None if paper is None or leakage_free is None else round(paper - leakage_free, 6)


def plot_protocol_comparison(comparison: dict[str, Any]) -> Figure:
    """Test accuracy and macro F1 of each protocol with their bootstrap intervals."""
    return plot_interval_comparison(
        comparison["protocols"], "Test accuracy and macro F1 by protocol, with bootstrap intervals"
    )


def comparison_mlflow_metrics(comparison: dict[str, Any]) -> dict[str, dict[str, float | int]]:
    """The comparison's headline numbers for the parent run: `<protocol>_test_accuracy`...,
    `<protocol>_test_leaked_fraction` and `paper_minus_leakage_free_<split>_<metric>`."""
    flat: dict[str, float | None] = {}
    for name, protocol in comparison["protocols"].items():
        for split in ("test", "val"):
            for metric in HEADLINE_METRICS:
                flat[f"{name}_{split}_{metric}"] = protocol[split][metric]
        flat[f"{name}_test_leaked_fraction"] = protocol["leakage"]["test"]["fraction_same_source"]
        for view, block in protocol["test_accuracy_by_view"].items():
            flat[f"{name}_test_accuracy_{view}"] = block["accuracy"]
    for name, value in comparison["paper_minus_leakage_free"].items():
        flat[f"paper_minus_leakage_free_{name}"] = value
    return {name: {"value": float(value), "step": 0} for name, value in flat.items() if value is not None}
