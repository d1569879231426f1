"""Wires the input-mode comparison: the shared data stages, then per input mode (namespaces
`original_input`, `segmented_input`, `masked_input`, `dual_input`) the model inputs in that mode,
augmentation, training and evaluation; then the table, its figure and one MLflow child run per mode."""

from kedro.pipeline import Node, Pipeline

from all_detection.layout import INPUT_MODES
from all_detection.pipelines import augmentation, ingestion, preprocessing
from all_detection.studies.wiring import child_runs_node, model_run, variant

from .nodes import compare_input_modes, plot_input_modes

# What each mode makes for itself: its model inputs, and the stain of its training inputs.
MODEL_INPUTS = ("prepare_model_inputs_node", "measure_training_stain_node")


def mode_run(input_mode: str) -> Pipeline:
    """One input mode's run: its model inputs and their stain, then augmentation, training, evaluation
    and the shortcut audit, all reading
    `params:<mode>_input.preprocessing` (the configured preprocessing with this input mode)."""
    prepared = preprocessing.create_pipeline().only_nodes(*MODEL_INPUTS)
    return variant(
        prepared + augmentation.create_pipeline() + model_run(),
        f"{input_mode}_input",
        shared=["raw_images", "manifest", "data_quality"],
        overridden=["params:preprocessing"],
    )


def create_pipeline(**kwargs) -> Pipeline:
    # The segmentation report and figure come from the preprocessing pipeline as configured; only the
    # model inputs are made once per mode.
    data_preparation = preprocessing.create_pipeline()
    shared = ingestion.create_pipeline() + (data_preparation - data_preparation.only_nodes(*MODEL_INPUTS))
    comparison = Pipeline(
        [
            Node(
                compare_input_modes,
                inputs={mode: f"{mode}_input.metrics" for mode in INPUT_MODES},
                outputs="input_mode_comparison",
                name="compare_input_modes_node",
            ),
            Node(
                plot_input_modes,
                inputs={mode: f"{mode}_input.metrics" for mode in INPUT_MODES},
                outputs="input_mode_comparison_figure",
                name="plot_input_modes_node",
            ),
            child_runs_node({mode: f"{mode}_input" for mode in INPUT_MODES}, "input_mode_runs"),
        ]
    )
    return Pipeline(
        [shared, *(mode_run(mode) for mode in INPUT_MODES), comparison], tags="input_mode_comparison"
    )
