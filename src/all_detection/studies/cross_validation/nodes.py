"""Cross-validation: the leakage-free protocol repeated over k folds, so each usable image is a test
image once, and the spread of the test numbers across folds shows how much one split's result can move.

Folds are stratified by class and keep duplicate groups whole (scikit-learn's StratifiedGroupKFold).
Each fold is a namespace (`fold_1`...) running the project's own augmentation, training and evaluation
pipelines, unchanged, on its own splits.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.model_selection import StratifiedGroupKFold

from all_detection.layout import SPLITS
from all_detection.studies.figures import plot_interval_comparison
from all_detection.studies.nodes import HEADLINE_METRICS, headline, pooled_images, pooled_index

logger = logging.getLogger(__name__)


def assign_folds(
    train_index: pd.DataFrame,
    val_index: pd.DataFrame,
    test_index: pd.DataFrame,
    cross_validation: dict[str, Any],
    seed: int,
) -> pd.DataFrame:
    """Every usable image (the three splits' indices, in that order) with its `fold`, 1 to k.

    k is `cross_validation.folds`. Folds are stratified by class, seeded, and never divide a duplicate
    group. Every class needs at least k groups, or some fold would have none of it to test on.
    """
    pooled = pooled_index(train_index, val_index, test_index)
    k = int(cross_validation["folds"])
    groups_per_class = pooled.groupby("label")["group"].nunique()
    if k < 2 or (groups_per_class < k).any():
        raise ValueError(
            f"cross_validation.folds must be at least 2 and at most the number of distinct images of the "
            f"smallest class; got {k} with {groups_per_class.to_dict()}"
        )
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    pooled["fold"] = 0
    for fold, (_, test_rows) in enumerate(splitter.split(pooled, pooled["label"], pooled["group"]), start=1):
        pooled.loc[test_rows, "fold"] = fold
    return pooled.drop(columns="split")


def _validation_rows(candidates: pd.DataFrame, share: float, seed: int) -> np.ndarray:
    """About `share` of `candidates` (stratified, groups whole) as the fold's validation rows."""
    parts = max(2, round(1 / share))
    splitter = StratifiedGroupKFold(n_splits=parts, shuffle=True, random_state=seed)
    _, rows = next(splitter.split(candidates, candidates["label"], candidates["group"]))
    return candidates.index.to_numpy()[rows]


def fold_splits(folds: pd.DataFrame, split: dict[str, Any]) -> list[pd.DataFrame]:
    """For each fold, 1 to k, every usable image's index row with the `split` it has in that fold.

    The fold is the test split; of the other folds' images, `split.val_fraction` of all images (in
    proportion, stratified, groups whole) is held out for early stopping and the rest is trained on.
    Rows keep `assign_folds`' order, the order of the pooled image stack.
    """
    k = int(folds["fold"].max())
    share = split["val_fraction"] / (1 - 1 / k)
    assignments = []
    for fold in range(1, k + 1):
        val_rows = _validation_rows(folds[folds["fold"] != fold], share, split["seed"])
        assigned = folds.assign(split="train")
        assigned.loc[folds["fold"] == fold, "split"] = "test"
        assigned.loc[val_rows, "split"] = "val"
        counts = assigned["split"].value_counts()
        logger.info("Fold %d of %d: %d training, %d validation, %d test images",
                    fold, k, counts.get("train", 0), counts.get("val", 0), counts.get("test", 0))  # fmt: skip
        assignments.append(assigned)
    return assignments


def split_fold(
    train_images: np.ndarray, val_images: np.ndarray, test_images: np.ndarray, fold_split: pd.DataFrame
) -> tuple[np.ndarray, pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray, pd.DataFrame]:
    """One fold's training, validation and test stacks and indices, as the preprocessing pipeline
    gives them for the configured split. Images must be the three splits' stacks in the order
    `assign_folds` pooled them (`fold_split`'s row order)."""
    images = pooled_images(train_images, val_images, test_images)
    if len(images) != len(fold_split):
        raise ValueError(f"{len(images)} images but {len(fold_split)} rows in the fold's split")
    stacks: list[Any] = []
    for name in SPLITS:
        rows = np.flatnonzero(fold_split["split"].to_numpy() == name)
        stacks += [images[rows], fold_split.iloc[rows].reset_index(drop=True)]
    return tuple(stacks)  # type: ignore[return-value]


def summarise_folds(**fold_metrics: dict[str, Any]) -> dict[str, Any]:
    """cross_validation.json: each fold's test and validation accuracy and macro F1 with intervals and
    split sizes (its metrics.json given as `fold_1=...`, in fold order), and across folds the mean and
    sample standard deviation of the test numbers."""
    folds = {
        name: {**headline(metrics), "split_sizes": metrics["run"]["split_sizes"]}
        for name, metrics in fold_metrics.items()
    }
    across = {}
    for metric in HEADLINE_METRICS:
        values = np.array([fold["test"][metric] for fold in folds.values()], dtype=float)
        across[f"test_{metric}"] = {
            "mean": round(float(np.mean(values)), 6),
            "std": round(float(np.std(values, ddof=1)), 6) if len(values) > 1 else None,
            "min": round(float(np.min(values)), 6),
            "max": round(float(np.max(values)), 6),
        }
    return {"k": len(folds), "folds": folds, "across_folds": across}


def plot_folds(summary: dict[str, Any]) -> Figure:
    """Test accuracy and macro F1 of each fold with their bootstrap intervals; mean and SD in the title."""
    accuracy, macro_f1 = summary["across_folds"]["test_accuracy"], summary["across_folds"]["test_macro_f1"]
    return plot_interval_comparison(
        summary["folds"],
        f"{summary['k']}-fold cross-validation: test accuracy {_mean_sd(accuracy)}, "
        f"macro F1 {_mean_sd(macro_f1)}",
    )


def _mean_sd(values: dict[str, float | None]) -> str:
    return f"{values['mean']:.3f}" + ("" if values["std"] is None else f" ± {values['std']:.3f}")


def cross_validation_mlflow_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """For the study's MLflow run: `cv_test_<metric>_mean` and `_std`, and `cv_fold_test_<metric>` with
    one step per fold (the fold's number), so the UI plots the folds as a series."""
    flat: dict[str, Any] = {}
    for metric in HEADLINE_METRICS:
        across = summary["across_folds"][f"test_{metric}"]
        for statistic in ("mean", "std"):
            if across[statistic] is not None:
                flat[f"cv_test_{metric}_{statistic}"] = {"value": across[statistic], "step": 0}
        flat[f"cv_fold_test_{metric}"] = [
            {"value": fold["test"][metric], "step": number}
            for number, fold in enumerate(summary["folds"].values(), start=1)
            if fold["test"][metric] is not None
        ]
    return flat
