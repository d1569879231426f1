"""Cross-validation: the leakage-free protocol repeated over k folds, so each usable image is a test
image once, and the spread of the test numbers across folds shows how much one split's result can move.

Folds are stratified by class and keep duplicate groups whole (scikit-learn's StratifiedGroupKFold).
Each fold runs the project's own augmentation, training and evaluation pipelines, unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.model_selection import StratifiedGroupKFold

from all_detection.pipelines import augmentation
from all_detection.studies import (
    HEADLINE_METRICS,
    headline,
    model_run,
    plot_interval_comparison,
    pooled_images,
    pooled_index,
    run_in_memory,
)

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


def cross_validate(
    train_images: np.ndarray,
    val_images: np.ndarray,
    test_images: np.ndarray,
    folds: pd.DataFrame,
    parameters: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train and evaluate one model per fold, the fold being its test set.

    Of the other folds' images, `split.val_fraction` of all images (in proportion) is held out for
    early stopping, the rest is the training split, augmented as `augmentation` says. Each fold runs
    the augmentation, training and evaluation pipelines in memory with every parameter as configured
    (no figures, no model card). Returns each fold's metrics.json and its MLflow child-run record,
    keyed `fold_1`... Images must be the three splits' stacks in the order `assign_folds` pooled them.
    """
    images = pooled_images(train_images, val_images, test_images)
    if len(images) != len(folds):
        raise ValueError(f"{len(images)} images but {len(folds)} rows in the fold assignment")
    seed, k = parameters["split"]["seed"], int(folds["fold"].max())
    share = parameters["split"]["val_fraction"] / (1 - 1 / k)
    pipeline = augmentation.create_pipeline() + model_run()
    metrics, runs = {}, {}
    for fold in range(1, k + 1):
        test_rows = np.flatnonzero(folds["fold"] == fold)
        val_rows = _validation_rows(folds[folds["fold"] != fold], share, seed)
        train_rows = np.setdiff1d(np.flatnonzero(folds["fold"] != fold), val_rows)
        logger.info("Fold %d of %d: %d training, %d validation, %d test images",
                    fold, k, len(train_rows), len(val_rows), len(test_rows))  # fmt: skip
        inputs = {}
        for split, rows in (("train", train_rows), ("val", val_rows), ("test", test_rows)):
            inputs[f"{split}_images"] = images[rows]
            inputs[f"{split}_index"] = folds.iloc[rows].reset_index(drop=True).assign(split=split)
        outputs = run_in_memory(pipeline, inputs, parameters, ["metrics", "mlflow_run"])
        metrics[f"fold_{fold}"] = outputs["metrics"]
        runs[f"fold_{fold}"] = outputs["mlflow_run"]
    return metrics, runs


def summarise_folds(fold_metrics: dict[str, Any]) -> dict[str, Any]:
    """cross_validation.json: each fold's test and validation accuracy and macro F1 with intervals and
    split sizes, and across folds the mean and sample standard deviation of the test numbers."""
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
