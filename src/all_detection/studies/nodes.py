"""The nodes every study shares: a variant's figures as one folder, every usable image pooled, the
headline numbers of a run and its MLflow record, and the study's runs gathered for MLflow."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

# The numbers each study compares, with their bootstrap intervals from metrics.json.
HEADLINE_METRICS = ("accuracy", "macro_f1")


def figures_by_file(**figures: Figure) -> dict[str, Figure]:
    """A variant's figures as one folder of PNG files, each named as a `kedro run` names it
    (`confusion_matrix.png`, `augmentation_examples.png`)."""
    return {f"{name.removesuffix('_figure')}.png": figure for name, figure in figures.items()}


def pooled_index(
    train_index: pd.DataFrame, val_index: pd.DataFrame, test_index: pd.DataFrame
) -> pd.DataFrame:
    """Every usable image's index row: the training, validation and test splits' rows, in that order,
    the order `pooled_images` stacks their pixels in."""
    return pd.concat([train_index, val_index, test_index], ignore_index=True)


def pooled_images(train_images: np.ndarray, val_images: np.ndarray, test_images: np.ndarray) -> np.ndarray:
    """Every usable image in one in-memory stack, in `pooled_index`'s order."""
    return np.concatenate([np.asarray(images) for images in (train_images, val_images, test_images)])


def headline(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Accuracy and macro F1 of the test and validation splits of a metrics.json, with their intervals."""
    summary = {}
    for split in ("test", "val"):
        block = metrics.get(split) or {}
        intervals = block.get("confidence_intervals") or {}
        summary[split] = {"n": block.get("n", 0)}
        for name in HEADLINE_METRICS:
            summary[split][name] = block.get(name)
            summary[split][f"{name}_ci"] = intervals.get(name)
    return summary


def mlflow_run(
    metrics: dict[str, Any],
    shortcut_audit: dict[str, Any],
    evaluation_metrics: dict[str, Any],
    shortcut_audit_metrics: dict[str, Any],
    model_card: str,
    classification_report: str,
) -> dict[str, Any]:
    """One study run as an MLflow child run: metrics.json's `run` block as parameters (`split_sizes.test`,
    `leakage.test.fraction_same_source`...), the final, per-epoch and audit metrics under the names a
    `kedro run` logs (so runs of every kind line up in the UI), metrics.json and shortcut_audit.json."""
    flat = pd.json_normalize(metrics["run"], sep=".").iloc[0].to_dict()
    return {
        "params": {name: value for name, value in flat.items() if value is not None},
        "metrics": {**evaluation_metrics, **shortcut_audit_metrics},
        "reports": {
            "metrics.json": metrics,
            "shortcut_audit.json": shortcut_audit,
            "model_card.md": model_card,
            "classification_report.txt": classification_report,
        },
    }


def child_runs(**runs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The study's runs by name, for `MlflowChildRunsDataset`."""
    return runs
