"""Wires the input-mode comparison: the shared data stages, then per input mode (namespaces
`original_input`, `segmented_input`, `masked_input`, `dual_input`) the model inputs in that mode,
augmentation, training and evaluation; then the table, its figure and one MLflow child run per mode."""

from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline

from all_detection.pipelines import augmentation, ingestion, preprocessing
from all_detection.pipelines.preprocessing.nodes import INPUT_MODES
from all_detection.studies import child_runs, model_run, namespaced, reading

from .nodes import compare_input_modes, plot_input_modes, with_input_mode

MODEL_INPUTS = "prepare_model_inputs_node"


def mode_run(input_mode: str) -> Pipeline:
    """One input mode's run: its settings, its model inputs, then augmentation, training, evaluation."""
    prepared = preprocessing.create_pipeline().only_nodes(MODEL_INPUTS)
    settings = Node(
        update_wrapper(partial(with_input_mode, input_mode=input_mode), with_input_mode),
        inputs="params:preprocessing",
        outputs="preprocessing_settings",
        name="with_input_mode_node",
    )
    run = reading(
        prepared + augmentation.create_pipeline() + model_run(),
        "params:preprocessing",
        "preprocessing_settings",
    )
    return namespaced(
        Pipeline([settings]) + run,
        f"{input_mode}_input",
        shared=["manifest", "data_quality_with_segmentation"],
    )


def create_pipeline(**kwargs) -> Pipeline:
    # The segmentation report and figure come from the preprocessing pipeline as configured; only the
    # model inputs are made once per mode.
    data_preparation = preprocessing.create_pipeline()
    shared = ingestion.create_pipeline() + (data_preparation - data_preparation.only_nodes(MODEL_INPUTS))
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
            Node(
                child_runs,
                inputs={mode: f"{mode}_input.mlflow_run" for mode in INPUT_MODES},
                outputs="input_mode_runs",
                name="input_mode_runs_node",
            ),
        ]
    )
    return Pipeline(
        [shared, *(mode_run(mode) for mode in INPUT_MODES), comparison], tags="input_mode_comparison"
    )
