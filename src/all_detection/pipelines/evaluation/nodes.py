"""Evaluation's work on the held-out splits: the trained model's predictions, and every metric of them
(`all_detection.metrics` does the maths).

The metrics report (metrics.json, MLflow metrics, classification report, leakage) is in `report.py`,
the figures in `figures.py`.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pandas as pd

from all_detection.core.prediction import predict_probabilities
from all_detection.layout import CLASSES, PROBABILITY_COLUMNS
from all_detection.metrics import split_scores


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


def prediction_arrays(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A prediction frame's true classes, predicted classes and class probabilities, as the metric
    maths takes them."""
    return (
        predictions["label_index"].to_numpy(dtype=np.int64),
        predictions["predicted_index"].to_numpy(dtype=np.int64),
        predictions[PROBABILITY_COLUMNS].to_numpy(dtype=np.float64),
    )


def evaluate_split(predictions: pd.DataFrame, evaluation: dict[str, Any], seed: int) -> dict[str, Any]:
    """Every metric of one split's predictions, ready for metrics.json (`metrics.split_scores`): the
    calibration error over `evaluation.ece_bins` bins, bootstrap intervals of `bootstrap_samples`
    resamples at `confidence_level`, seeded with `seed`. An empty split gives only `n`: 0.
    """
    if predictions.empty:
        return {"n": 0}
    return split_scores(
        *prediction_arrays(predictions),
        predictions["confidence"].to_numpy(dtype=np.float64),
        predictions["correct"].to_numpy(dtype=bool),
        evaluation["ece_bins"],
        evaluation["bootstrap_samples"],
        evaluation["confidence_level"],
        seed,
    )
