"""Wires preprocessing: model inputs per split, the training images' stain and a figure of the
segmentation."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    measure_training_stain,
    plot_segmentation_examples,
    prepare_model_inputs,
)


def stain_measurement() -> Pipeline:
    """The training images' stain, which the model normalises to or augmentation draws around; a study
    that makes its own training split (a cross-validation fold) measures it again on that split."""
    return Pipeline(
        [
            Node(
                measure_training_stain,
                inputs="train_images",
                outputs="stain_reference",
                name="measure_training_stain_node",
            )
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    return stain_measurement() + Pipeline(
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
