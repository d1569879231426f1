"""Evaluation: the trained model's predictions on the validation and test splits, their metrics with
bootstrap intervals, MLflow metric histories, a classification report and a model card.

The figures are in `figures.py`. scikit-learn does the arithmetic; undefined metrics (a class absent
from a split) are None, never NaN, so every result is valid JSON.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    recall_score,
    roc_auc_score,
)

from all_detection.core.prediction import predict_probabilities
from all_detection.layout import CLASSES, DETECTION_POSITIVE, PROBABILITY_COLUMNS
from all_detection.metrics import bootstrap_intervals, nested, reported

logger = logging.getLogger(__name__)

#: One probability column per class in the prediction frames, in the model's output order.
LABELS: list[int] = list(range(len(CLASSES)))
BENIGN = CLASSES.index("Benign")
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


def predict_split(
    model: keras.Model, images: np.ndarray, index: pd.DataFrame, batch_size: int
) -> pd.DataFrame:
    """The model's class probabilities for every image of a split, one row per image in `index` order.

    Images are read from the (memory-mapped) stack `batch_size` at a time (`predict_probabilities`).
    Columns: `image_id`, `label`, `label_index`, `predicted` and `predicted_index` (the most probable
    class), `confidence` (its probability), `correct`, and `prob_<class>` per class.
    """
    if len(images) != len(index):
        raise ValueError(f"{len(images)} images but {len(index)} index rows; they must match row for row")
    probabilities = predict_probabilities(model, images, batch_size)
    predicted = probabilities.argmax(axis=1)
    label_index = index["label_index"].to_numpy(dtype=np.int64)
    predictions = pd.DataFrame(
        {
            "image_id": index["image_id"].astype(str).to_numpy(),
            "label": index["label"].astype(str).to_numpy(),
            "label_index": label_index,
            "predicted": np.asarray(CLASSES, dtype=object)[predicted],
            "predicted_index": predicted,
            "confidence": probabilities.max(axis=1, initial=0.0),
            "correct": predicted == label_index,
        }
    )
    return pd.concat([predictions, pd.DataFrame(probabilities, columns=PROBABILITY_COLUMNS)], axis=1)


def _arrays(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        predictions["label_index"].to_numpy(dtype=np.int64),
        predictions["predicted_index"].to_numpy(dtype=np.int64),
        predictions[PROBABILITY_COLUMNS].to_numpy(dtype=np.float64),
    )


def per_class_scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, dict[str, float | None]]:
    """Precision, recall, F1, specificity and support of each class, one class against the rest.

    A score whose denominator is empty (precision of a class never predicted, recall of a class absent
    from the split, specificity when every image is of that class) is None.
    """
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=LABELS, zero_division=np.nan
    )
    # Each class's [[tn, fp], [fn, tp]]: specificity is the recall of "not this class".
    counts = multilabel_confusion_matrix(truth, predicted, labels=LABELS)
    negatives = counts[:, 0, 0] + counts[:, 0, 1]
    specificity = np.divide(counts[:, 0, 0], negatives, out=np.full(len(LABELS), np.nan), where=negatives > 0)
    return {
        label: {
            "precision": reported(precision[k]),
            "recall": reported(recall[k]),
            "f1": reported(f1[k]),
            "specificity": reported(specificity[k]),
            "support": int(support[k]),
        }
        for k, label in enumerate(CLASSES)
    }


def one_vs_rest_auc(truth: np.ndarray, probabilities: np.ndarray) -> dict[str, float | None]:
    """ROC AUC of each class's probability against the rest, and their mean as `macro`.

    A class's AUC is None when the split lacks either its images or any other image; `macro` averages
    the defined ones (the same as scikit-learn's one-vs-rest macro AUC when all classes are present).
    """
    aucs = {
        label: reported(roc_auc_score(truth == k, probabilities[:, k]))
        if 0 < np.sum(truth == k) < len(truth)
        else None
        for k, label in enumerate(CLASSES)
    }
    defined = [value for value in aucs.values() if value is not None]
    return {**aucs, "macro": reported(np.mean(defined)) if defined else None}


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int) -> pd.DataFrame:
    """Equal-width confidence bins over [0, 1], each (lower, upper], with the number of predictions in
    it, their mean confidence and their accuracy (NaN in an empty bin)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(which, weights=np.asarray(correct, dtype=np.float64), minlength=bins) / count
    return pd.DataFrame(
        {
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": count,
            "confidence": mean_confidence,
            "accuracy": accuracy,
        }
    )


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """The count-weighted mean gap between accuracy and mean confidence over equal-width bins."""
    table = calibration_bins(confidence, correct, bins)
    filled = table[table["count"] > 0]
    gaps = (filled["accuracy"] - filled["confidence"]).abs()
    return float((filled["count"] * gaps).sum() / max(len(confidence), 1))


def detection_scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """Benign against any malignant stage: sensitivity and specificity of calling an image malignant,
    with the four counts. A rate with no images to measure it on is None."""
    malignant, called = truth != BENIGN, predicted != BENIGN
    tn, fp, fn, tp = confusion_matrix(malignant, called, labels=[False, True]).ravel()
    return {
        "positive": DETECTION_POSITIVE,
        "sensitivity": reported(recall_score(malignant, called, pos_label=True, zero_division=np.nan)),
        "specificity": reported(recall_score(malignant, called, pos_label=False, zero_division=np.nan)),
        "tp": int(tp),
        "fn": int(fn),
        "tn": int(tn),
        "fp": int(fp),
    }


def evaluate_split(predictions: pd.DataFrame, evaluation: dict[str, Any], seed: int) -> dict[str, Any]:
    """Every metric of one split's predictions, ready for metrics.json.

    Accuracy, per-class scores, macro and weighted F1 (over the classes present in truth or
    predictions, scikit-learn's convention), Cohen's kappa, MCC, one-vs-rest ROC AUC, the confusion
    matrix (counts and normalised by true class), the expected calibration error over
    `evaluation.ece_bins` bins, bootstrap intervals (`bootstrap_samples`, `confidence_level`, seeded
    with `seed`), benign-versus-malignant detection and `n`. An empty split gives only `n`: 0.
    """
    if predictions.empty:
        return {"n": 0}
    truth, predicted, probabilities = _arrays(predictions)
    return {
        "accuracy": reported(accuracy_score(truth, predicted)),
        "per_class": per_class_scores(truth, predicted),
        "macro_f1": reported(f1_score(truth, predicted, average="macro", zero_division=0)),
        "weighted_f1": reported(f1_score(truth, predicted, average="weighted", zero_division=0)),
        # Kappa is 0/0 when truth and predictions are one and the same single class.
        "cohen_kappa": reported(cohen_kappa_score(truth, predicted, labels=LABELS)),
        "mcc": reported(matthews_corrcoef(truth, predicted)),
        "roc_auc": one_vs_rest_auc(truth, probabilities),
        "confusion_matrix": {
            "labels": list(CLASSES),
            "counts": confusion_matrix(truth, predicted, labels=LABELS).tolist(),
            # Rows of classes absent from the split are all zeros.
            "normalized": [
                [reported(value) for value in row]
                for row in confusion_matrix(truth, predicted, labels=LABELS, normalize="true")
            ],
        },
        "ece": reported(
            expected_calibration_error(
                predictions["confidence"].to_numpy(dtype=np.float64),
                predictions["correct"].to_numpy(dtype=bool),
                evaluation["ece_bins"],
            )
        ),
        "confidence_intervals": bootstrap_intervals(
            truth, predicted, evaluation["bootstrap_samples"], evaluation["confidence_level"], seed
        ),
        "detection": detection_scores(truth, predicted),
        "n": len(predictions),
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
        truth, predicted, _ = _arrays(predictions)
        report = (
            classification_report(
                truth, predicted, labels=LABELS, target_names=list(CLASSES), digits=4, zero_division=0
            )
            if len(predictions)
            else "(no images)\n"
        )
        sections.append(f"{title} ({len(predictions)} images)\n{'=' * 40}\n{report}")
    return "\n".join(sections)
