"""The numbers a report gives: rounded for reading, None where undefined, with bootstrap intervals."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

# Enough for any metric on a few thousand images, short enough to read in metrics.json.
DIGITS = 6


def reported(value: float) -> float | None:
    """A metric rounded for the report, or None where it is undefined (NaN)."""
    value = float(value)
    return round(value, DIGITS) if np.isfinite(value) else None


def bootstrap_intervals(
    truth: np.ndarray, predicted: np.ndarray, samples: int, level: float, seed: int
) -> dict[str, Any]:
    """Percentile bootstrap intervals of accuracy and macro F1, resampling images with replacement.

    Both metrics are computed on the same resamples; the generator is seeded, so the same seed gives
    the same intervals. The intervals say how much the numbers could move on another draw of images
    like these, not how they would fare on other patients or hospitals.
    """
    rng = np.random.default_rng(seed)
    accuracy, macro_f1 = np.empty(samples), np.empty(samples)
    for sample in range(samples):
        rows = rng.integers(0, len(truth), len(truth))
        accuracy[sample] = accuracy_score(truth[rows], predicted[rows])
        macro_f1[sample] = f1_score(truth[rows], predicted[rows], average="macro", zero_division=0)
    tail = 100 * (1 - level) / 2
    return {
        "accuracy": [reported(value) for value in np.percentile(accuracy, [tail, 100 - tail])],
        "macro_f1": [reported(value) for value in np.percentile(macro_f1, [tail, 100 - tail])],
        "level": level,
        "bootstrap_samples": samples,
    }


def nested(block: dict[str, Any], *path: str | int) -> Any:
    for key in path:
        try:
            block = block[key]
        except (KeyError, IndexError, TypeError):
            return None
    return block
