"""Input-mode comparison: which view of a smear the model should see. `original` is the paper's;
`segmented` (stained cells on black) and `masked` (background dimmed) use the HSV blast mask; `dual`
feeds both, as the dataset's authors did. Each mode is one namespaced run of the project's pipelines.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from all_detection.studies.figures import plot_interval_comparison
from all_detection.studies.nodes import HEADLINE_METRICS, headline


def compare_input_modes(**metrics_by_mode: dict[str, Any]) -> pd.DataFrame:
    """One row per input mode: test and validation accuracy and macro F1 with the bounds of their
    bootstrap intervals, the split sizes and the epochs trained; in the order the modes are given."""
    rows = []
    for mode, metrics in metrics_by_mode.items():
        row: dict[str, Any] = {"input_mode": mode}
        for split, numbers in headline(metrics).items():
            row[f"{split}_n"] = numbers["n"]
            for metric in HEADLINE_METRICS:
                low, high = numbers[f"{metric}_ci"] or (None, None)
                row[f"{split}_{metric}"] = numbers[metric]
                row[f"{split}_{metric}_ci_low"], row[f"{split}_{metric}_ci_high"] = low, high
        row["train_images"] = metrics["run"]["split_sizes"]["train"]
        row["epochs_run"] = metrics["run"]["epochs_run"]
        rows.append(row)
    return pd.DataFrame(rows)


def plot_input_modes(**metrics_by_mode: dict[str, Any]) -> Figure:
    """Test accuracy and macro F1 of each input mode with their bootstrap intervals."""
    return plot_interval_comparison(
        {mode: headline(metrics) for mode, metrics in metrics_by_mode.items()},
        "Test accuracy and macro F1 by input mode, with bootstrap intervals",
    )
