"""The metric maths (`all_detection.metrics`) on arrays, as evaluation, its figures, the studies and the
benchmarks call it: no Kedro, Keras or MLflow needed."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

import all_detection.metrics
from all_detection.layout import CLASSES
from all_detection.metrics import (
    accuracy,
    bootstrap_intervals,
    detection_scores,
    per_class_scores,
    resampled_scores,
    split_scores,
)

# Two images of each class; one Early called Benign, one Pro called Pre.
TRUTH = np.array([0, 0, 1, 1, 2, 2, 3, 3])
PREDICTED = np.array([0, 0, 0, 1, 2, 2, 2, 3])


def test_the_metric_maths_import_no_kedro_keras_or_mlflow():
    tree = ast.parse(Path(all_detection.metrics.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    roots = {name.split(".")[0] for name in imported}
    assert not roots & {"kedro", "keras", "tensorflow", "jax", "mlflow"}


def test_split_scores_gives_every_metric_of_a_split_in_metrics_json_order():
    probabilities = np.eye(len(CLASSES))[PREDICTED] * 0.7 + 0.075
    scores = split_scores(TRUTH, PREDICTED, probabilities, probabilities.max(axis=1), TRUTH == PREDICTED,
                          ece_bins=10, bootstrap_samples=50, confidence_level=0.9, seed=0)  # fmt: skip
    assert list(scores) == [
        "accuracy", "per_class", "macro_f1", "weighted_f1", "cohen_kappa", "mcc", "roc_auc",
        "confusion_matrix", "ece", "confidence_intervals", "detection", "n",
    ]  # fmt: skip
    assert scores["accuracy"] == accuracy(TRUTH, PREDICTED) == 0.75
    assert scores["per_class"] == per_class_scores(TRUTH, PREDICTED)
    assert scores["per_class"]["Early"]["recall"] == 0.5
    assert scores["per_class"]["Pre"]["precision"] == 0.666667
    assert scores["detection"] == detection_scores(TRUTH, PREDICTED)
    assert (scores["detection"]["tp"], scores["detection"]["fn"]) == (5, 1)
    assert scores["ece"] == pytest.approx(0.775 - 0.75, abs=1e-6)
    assert scores["confidence_intervals"]["bootstrap_samples"] == 50 and scores["n"] == 8


@pytest.mark.parametrize("classes", [1, 2, 4])
def test_resampled_scores_are_scikit_learn_s_bit_for_bit(classes: int):
    rng = np.random.default_rng(classes)
    truth = rng.integers(0, classes, 30)
    predicted = np.where(rng.random(30) < 0.7, truth, rng.integers(0, len(CLASSES), 30))
    # Small resamples of 30 leave classes out of some of them, the case macro F1 is defined on with care.
    rows = rng.integers(0, 30, (60, 30))
    accuracies, macro_f1s = resampled_scores(truth, predicted, rows)
    for row, accuracy_of_row, macro_f1 in zip(rows, accuracies, macro_f1s, strict=True):
        assert accuracy_of_row == accuracy_score(truth[row], predicted[row])
        assert macro_f1 == f1_score(truth[row], predicted[row], average="macro", zero_division=0)


def test_a_bootstrap_of_no_images_is_refused_by_name():
    with pytest.raises(ValueError, match="No images to resample"):
        bootstrap_intervals(np.array([], int), np.array([], int), 10, 0.95, 1)
