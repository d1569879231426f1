"""The figure the studies share: each run's headline numbers side by side with their intervals."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from all_detection.studies.nodes import HEADLINE_METRICS


def plot_interval_comparison(summaries: dict[str, dict[str, Any]], title: str, split: str = "test") -> Figure:
    """Accuracy and macro F1 of each run on `split` as bars with their bootstrap intervals, and under
    each run's name the number of images its numbers rest on."""
    names = list(summaries)
    figure, ax = plt.subplots(figsize=(2.2 + 1.6 * len(names), 3.6))
    width = 0.8 / len(HEADLINE_METRICS)
    for offset, metric in enumerate(HEADLINE_METRICS):
        values = np.array([summaries[name][split][metric] or 0.0 for name in names])
        intervals = [summaries[name][split][f"{metric}_ci"] or [None, None] for name in names]
        low = np.array([values[k] - (pair[0] if pair[0] is not None else values[k]) for k, pair in
                        enumerate(intervals)])  # fmt: skip
        high = np.array([(pair[1] if pair[1] is not None else values[k]) - values[k] for k, pair in
                         enumerate(intervals)])  # fmt: skip
        positions = np.arange(len(names)) + (offset - (len(HEADLINE_METRICS) - 1) / 2) * width
        bars = ax.bar(positions, values, width, yerr=[low, high], capsize=4,
                      label=metric.replace("_", " "))  # fmt: skip
        ax.bar_label(bars, labels=[f"{value:.3f}" for value in values], label_type="center", fontsize=7)
    ticks = [f"{name.replace('_', ' ')}\nn = {summaries[name][split].get('n', '?')}" for name in names]
    ax.set_xticks(np.arange(len(names)), ticks)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(f"{split} score")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure
