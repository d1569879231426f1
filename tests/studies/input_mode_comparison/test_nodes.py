"""Each mode's settings and the comparison table of the input-mode study."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure

from all_detection.layout import INPUT_MODES
from all_detection.studies.input_mode_comparison.nodes import compare_input_modes, plot_input_modes
from all_detection.studies.input_mode_comparison.pipeline import create_pipeline
from tests.configuration import configured_parameters


@pytest.mark.parametrize("env", [None, "demo"])
def test_each_mode_s_run_reads_the_configured_preprocessing_with_its_mode(env):
    parameters = configured_parameters(env, preprocessing={"image_size": 64, "masked": {"dilation_px": 3}})
    for mode in INPUT_MODES:
        settings = parameters[f"{mode}_input"]["preprocessing"]
        # --params reach every mode, and only the mode differs from the configured section.
        assert settings == {**parameters["preprocessing"], "input_mode": mode}
        assert settings["image_size"] == 64 and settings["masked"]["dilation_px"] == 3


def test_each_mode_s_run_is_a_variant_reading_its_own_preprocessing():
    pipeline = create_pipeline()
    for mode in INPUT_MODES:
        namespace = f"{mode}_input"
        read = {name for node in pipeline.nodes if node.namespace == namespace for name in node.inputs}
        assert f"params:{namespace}.preprocessing" in read and "params:preprocessing" not in read
        assert "params:training" in read  # every other setting is the shared one


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
