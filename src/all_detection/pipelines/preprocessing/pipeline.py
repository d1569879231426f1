"""Wires preprocessing: model inputs per split and a figure of the segmentation."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    plot_segmentation_examples,
    prepare_model_inputs,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                prepare_model_inputs,
                inputs=["manifest", "raw_images", "params:preprocessing", "params:ingestion"],
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
                plot_segmentation_examples,
                inputs=["manifest", "raw_images", "params:preprocessing", "params:ingestion"],
                outputs="segmentation_examples",
                name="plot_segmentation_examples_node",
            ),
        ],
        tags="preprocessing",
    )
