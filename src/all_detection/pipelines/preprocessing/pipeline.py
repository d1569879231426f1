"""Wires preprocessing: model inputs per split, segmentation agreement into the report, a figure."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    add_segmentation_agreement,
    measure_segmentation_agreement,
    plot_segmentation_examples,
    prepare_model_inputs,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                prepare_model_inputs,
                inputs=["manifest", "params:dataset", "params:preprocessing", "params:ingestion"],
                outputs=[
                    "train_images",
                    "train_index",
                    "val_images",
                    "val_index",
                    "test_images",
                    "test_index",
                ],
                name="prepare_model_inputs_node",
            ),
            Node(
                measure_segmentation_agreement,
                inputs=["manifest", "params:dataset", "params:preprocessing", "params:ingestion"],
                outputs="segmentation_agreement",
                name="measure_segmentation_agreement_node",
            ),
            Node(
                add_segmentation_agreement,
                inputs=["data_quality", "segmentation_agreement"],
                outputs="data_quality_with_segmentation",
                name="add_segmentation_agreement_node",
            ),
            Node(
                plot_segmentation_examples,
                inputs=["manifest", "params:dataset", "params:preprocessing", "params:ingestion"],
                outputs="segmentation_examples",
                name="plot_segmentation_examples_node",
            ),
        ],
        tags="preprocessing",
    )
