"""The per-mode settings and the comparison table of the input-mode study."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from all_detection.pipelines.input_mode_comparison.nodes import (
    compare_input_modes,
    plot_input_modes,
    with_input_mode,
)


def test_a_mode_s_settings_are_the_configured_ones_with_its_mode():
    configured = {"image_size": 96, "input_mode": "original", "segmentation": {"opening_px": 0}}
    masked = with_input_mode(configured, "masked")
    assert masked == {**configured, "input_mode": "masked"}
    assert configured["input_mode"] == "original"  # the configured settings are left as they were


def metrics(accuracy: float, epochs: int) -> dict:
    block = {
        "n": 40,
        "accuracy": accuracy,
        "macro_f1": accuracy - 0.05,
        "confidence_intervals": {"accuracy": [accuracy - 0.1, accuracy + 0.1], "macro_f1": None},
    }
    return {
        "test": block,
        "val": {**block, "n": 8},
        "run": {"split_sizes": {"train": 112}, "epochs_run": epochs},
    }


def test_the_table_has_one_row_per_mode_in_order_with_intervals():
    table = compare_input_modes(original=metrics(0.8, 9), dual=metrics(0.85, 12))
    assert table["input_mode"].tolist() == ["original", "dual"]
    row = table.iloc[1]
    assert row["test_accuracy"] == 0.85 and row["test_n"] == 40 and row["val_n"] == 8
    assert (row["test_accuracy_ci_low"], row["test_accuracy_ci_high"]) == (0.75, 0.95)
    assert row["test_macro_f1_ci_low"] is None
    assert row["train_images"] == 112 and row["epochs_run"] == 12
    figure = plot_input_modes(original=metrics(0.8, 9), dual=metrics(0.85, 12))
    assert isinstance(figure, Figure)
    plt.close(figure)
