"""Evaluation's report of a run: metrics.json (both splits' metrics and what was evaluated, with the
measured leakage of training into the held-out splits), the metrics MLflow logs, and scikit-learn's
classification report."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import classification_report

from all_detection.layout import CLASSES
from all_detection.metrics import LABELS, nested, reported

from .nodes import prediction_arrays

#: The training history's per-epoch columns (Keras' names) and the names MLflow shows them by: what was
#: measured on the training views is `train_*`, on the validation images `val_*`.
HISTORY_METRICS = {
    "loss": "train_loss",
    "accuracy": "train_accuracy",
    "val_loss": "val_loss",
    "val_accuracy": "val_accuracy",
    "learning_rate": "train_learning_rate",
    "epoch_seconds": "train_epoch_seconds",
}


def measure_leakage(
    augmented_train_index: pd.DataFrame, val_index: pd.DataFrame, test_index: pd.DataFrame
) -> dict[str, Any]:
    """How many validation and test images the training set has already seen, in some form.

    An image is counted when a training view comes from the same source image (the image itself or
    a random view of it) or from the same duplicate group (an exact or near copy). A held-out image's
    source is its `source_id` where the index has one (views split after augmentation, the paper's
    protocol), else its `image_id`. The project's own protocol gives zeros by construction; this
    measures it rather than assumes it, so every metrics.json says how honest its test set is.
    """
    seen_sources = set(augmented_train_index["source_id"].astype(str))
    seen_groups = set(augmented_train_index["group"].astype(str))
    leakage = {}
    for split, index in (("val", val_index), ("test", test_index)):
        sources = index["source_id"] if "source_id" in index else index["image_id"]
        same_source = int(sources.astype(str).isin(seen_sources).sum())
        same_group = int(index["group"].astype(str).isin(seen_groups).sum())
        leakage[split] = {
            "n": len(index),
            "same_source_in_training": same_source,
            "same_group_in_training": same_group,
            "fraction_same_source": reported(same_source / len(index)) if len(index) else None,
            "fraction_same_group": reported(same_group / len(index)) if len(index) else None,
        }
    return leakage


def assemble_metrics(
    val_metrics: dict[str, Any],
    test_metrics: dict[str, Any],
    training_summary: dict[str, Any],
    train_index: pd.DataFrame,
    augmented_train_index: pd.DataFrame,
    leakage: dict[str, Any],
    preprocessing: dict[str, Any],
    augmentation: dict[str, Any],
    tta: str,
) -> dict[str, Any]:
    """metrics.json: the test and validation blocks and a `run` block saying what was evaluated (training
    mode and epochs, base weights actually used, device, input mode and size, the `recipe`: where VGG16
    was cut and which of its layers were fine-tuned, class weights, class-balanced augmentation, stain
    normalisation and test-time augmentation; the split sizes with the number of training views, and the
    measured `leakage` of training into validation and test)."""
    return {
        "test": test_metrics,
        "val": val_metrics,
        "run": {
            "mode": training_summary["mode"],
            "epochs_run": training_summary["epochs_run"],
            "best_epoch": training_summary["best_epoch"],
            "base_weights": training_summary["base_weights"]["used"],
            "device": training_summary["device"],
            "input_mode": preprocessing["input_mode"],
            "image_size": preprocessing["image_size"],
            "recipe": {
                "cache_at": training_summary["cache_at"],
                "fine_tuned_layers": training_summary["fine_tuned_layers"],
                "class_weight": training_summary["class_weight"],
                "balanced_augmentation": bool(augmentation["balance"]),
                "stain_normalisation": preprocessing.get("stain_normalisation", "none"),
                "tta": tta,
            },
            "split_sizes": {
                "train": len(train_index),
                "train_views": len(augmented_train_index),
                "val": val_metrics["n"],
                "test": test_metrics["n"],
            },
            "leakage": leakage,
        },
    }


def to_mlflow_metrics(
    test_metrics: dict[str, Any], val_metrics: dict[str, Any], training_history: pd.DataFrame
) -> dict[str, Any]:
    """The run's numbers for MLflow, in the order its run page lists them (the order they are first
    logged): the test split's headline numbers (`test_accuracy`, `test_accuracy_ci_low`...), the
    validation split's (`validation_*`), then the per-epoch history (`train_*` and `val_*`).

    Final numbers are `{"value", "step": 0}`; each history metric is a list of those, one per epoch
    (`history_to_mlflow_metrics`). Undefined values are left out."""
    return {
        **split_mlflow_metrics(test_metrics, "test"),
        **split_mlflow_metrics(val_metrics, "validation"),
        **history_to_mlflow_metrics(training_history),
    }


def split_mlflow_metrics(block: dict[str, Any], prefix: str) -> dict[str, dict[str, float | int]]:
    """One split's headline numbers as `{name: {"value", "step": 0}}`, named `<prefix>_<metric>`
    (`test_accuracy`, `validation_f1_Benign`...); `validation_*` never mixes with the per-epoch `val_*`
    history Keras reports. Undefined values are left out."""
    named = {
        "accuracy": ("accuracy",),
        "accuracy_ci_low": ("confidence_intervals", "accuracy", 0),
        "accuracy_ci_high": ("confidence_intervals", "accuracy", 1),
        "macro_f1": ("macro_f1",),
        "macro_f1_ci_low": ("confidence_intervals", "macro_f1", 0),
        "macro_f1_ci_high": ("confidence_intervals", "macro_f1", 1),
        "weighted_f1": ("weighted_f1",),
        "kappa": ("cohen_kappa",),
        "mcc": ("mcc",),
        "roc_auc_macro": ("roc_auc", "macro"),
        "ece": ("ece",),
        "sensitivity": ("detection", "sensitivity"),
        "specificity": ("detection", "specificity"),
    }
    for label in CLASSES:
        for score in ("f1", "precision", "recall", "specificity"):
            named[f"{score}_{label}"] = ("per_class", label, score)
        named[f"roc_auc_{label}"] = ("roc_auc", label)
    values = {f"{prefix}_{name}": nested(block or {}, *path) for name, path in named.items()}
    return {
        name: {"value": float(value), "step": 0}
        for name, value in values.items()
        if value is not None and np.isfinite(value)
    }


def history_to_mlflow_metrics(training_history: pd.DataFrame) -> dict[str, list[dict[str, float | int]]]:
    """Each per-epoch column of the training history as an MLflow metric history under its
    `HISTORY_METRICS` name (`train_loss`, `val_accuracy`...), one step per epoch (the step is the epoch
    number, so a fine-tuning phase continues where the head's training stopped)."""
    return {
        name: [
            {"value": float(value), "step": int(epoch)}
            for epoch, value in zip(training_history["epoch"], training_history[column], strict=True)
            if np.isfinite(value)
        ]
        for column, name in HISTORY_METRICS.items()
        if column in training_history.columns
    }


def write_classification_report(val_predictions: pd.DataFrame, test_predictions: pd.DataFrame) -> str:
    """scikit-learn's classification report of the test split, then of the validation split."""
    sections = []
    for title, predictions in (("Test split", test_predictions), ("Validation split", val_predictions)):
        truth, predicted, _ = prediction_arrays(predictions)
        report = (
            classification_report(
                truth, predicted, labels=LABELS, target_names=list(CLASSES), digits=4, zero_division=0
            )
            if len(predictions)
            else "(no images)\n"
        )
        sections.append(f"{title} ({len(predictions)} images)\n{'=' * 40}\n{report}")
    return "\n".join(sections)
