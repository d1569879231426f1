"""Metric maths of a split's true classes, predictions and probabilities, for evaluation's metrics.json
and figures, the shortcut audit, the studies and the benchmarks: rounded for reading, None where
undefined (a class absent from a split), never NaN, so every result is valid JSON.

Plain numpy and scikit-learn, which does the arithmetic: no Kedro, Keras or MLflow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    recall_score,
    roc_auc_score,
)

from all_detection.layout import CLASSES, DETECTION_POSITIVE

# Enough for any metric on a few thousand images, short enough to read in metrics.json.
DIGITS = 6
#: The class indices, in the model's output order (one probability column per class).
LABELS: list[int] = list(range(len(CLASSES)))
BENIGN = CLASSES.index("Benign")


def reported(value: float) -> float | None:
    """A metric rounded for the report, or None where it is undefined (NaN)."""
    value = float(value)
    return round(value, DIGITS) if np.isfinite(value) else None


def split_scores(
    truth: np.ndarray,
    predicted: np.ndarray,
    probabilities: np.ndarray,
    confidence: np.ndarray,
    correct: np.ndarray,
    ece_bins: int,
    bootstrap_samples: int,
    confidence_level: float,
    seed: int,
) -> dict[str, Any]:
    """Every metric of one split's predictions (at least one image), ready for metrics.json.

    Accuracy, per-class scores, macro and weighted F1 (over the classes present in truth or
    predictions, scikit-learn's convention), Cohen's kappa, MCC, one-vs-rest ROC AUC, the confusion
    matrix (counts and normalised by true class), the expected calibration error of `confidence` and
    `correct` over `ece_bins` bins, bootstrap intervals (`bootstrap_samples` resamples at
    `confidence_level`, seeded with `seed`), benign-versus-malignant detection and `n`.
    """
    return {
        "accuracy": accuracy(truth, predicted),
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
        "ece": reported(expected_calibration_error(confidence, correct, ece_bins)),
        "confidence_intervals": bootstrap_intervals(
            truth, predicted, bootstrap_samples, confidence_level, seed
        ),
        "detection": detection_scores(truth, predicted),
        "n": len(truth),
    }


def accuracy(truth: np.ndarray, predicted: np.ndarray) -> float | None:
    """The fraction of images whose predicted class is their true class."""
    return reported(accuracy_score(truth, predicted))


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


def bootstrap_intervals(
    truth: np.ndarray, predicted: np.ndarray, samples: int, level: float, seed: int
) -> dict[str, Any]:
    """Percentile bootstrap intervals of accuracy and macro F1, resampling images with replacement.

    Both metrics are computed on the same resamples; the generator is seeded, so the same seed gives
    the same intervals. The intervals say how much the numbers could move on another draw of images
    like these, not how they would fare on other patients or hospitals.
    """
    if len(truth) == 0:
        raise ValueError("No images to resample: a bootstrap interval needs at least one prediction.")
    rng = np.random.default_rng(seed)
    rows = np.stack([rng.integers(0, len(truth), len(truth)) for _ in range(samples)])
    accuracy, macro_f1 = resampled_scores(truth, predicted, rows)
    tail = 100 * (1 - level) / 2
    return {
        "accuracy": [reported(value) for value in np.percentile(accuracy, [tail, 100 - tail])],
        "macro_f1": [reported(value) for value in np.percentile(macro_f1, [tail, 100 - tail])],
        "level": level,
        "bootstrap_samples": samples,
    }


def resampled_scores(
    truth: np.ndarray, predicted: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and macro F1 of each resample (a row of `rows`, indices into the predictions), equal to
    scikit-learn's `accuracy_score` and `f1_score(average="macro", zero_division=0)` on it, bit for bit,
    from one confusion matrix per resample: a thousand resamples cost one pass instead of a thousand
    calls. As scikit-learn does, a resample's macro F1 averages over the classes it holds (in its truth
    or its predictions), each class's F1 being 2 tp / (true + predicted)."""
    labels, codes = np.unique(np.concatenate([truth, predicted]), return_inverse=True)
    k, true_codes, predicted_codes = len(labels), codes[: len(truth)], codes[len(truth) :]
    cells = true_codes[rows] * k + predicted_codes[rows] + (k * k) * np.arange(len(rows))[:, None]
    confusion = np.bincount(cells.ravel(), minlength=len(rows) * k * k).reshape(len(rows), k, k)
    hits = np.trace(confusion, axis1=1, axis2=2)
    accuracy = hits / rows.shape[1]
    true_sum, predicted_sum = confusion.sum(axis=2), confusion.sum(axis=1)
    held = (true_sum + predicted_sum) > 0
    denominator = np.where(held, true_sum + predicted_sum, 1).astype(np.float64)
    f1 = np.where(held, 2.0 * np.diagonal(confusion, axis1=1, axis2=2) / denominator, 0.0)
    return accuracy, f1.sum(axis=1) / held.sum(axis=1)


def nested(block: dict[str, Any], *path: str | int) -> Any:
    """The value at `path` in nested dicts and lists, or None where any step is missing."""
    for key in path:
        try:
            block = block[key]
        except (KeyError, IndexError, TypeError):
            return None
    return block
