"""Wires augmentation: transform the training split into extra views, then show a few of them."""

from kedro.pipeline import Node, Pipeline

from .nodes import augment_training_split, plot_augmentation_examples


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                augment_training_split,
                inputs=[
                    "train_images",
                    "train_index",
                    "stain_reference",
                    "params:augmentation",
                    "params:split.seed",
                ],
                outputs=["augmented_train_images", "augmented_train_index"],
                name="augment_training_split_node",
            ),
            Node(
                plot_augmentation_examples,
                inputs=[
                    "augmented_train_images",
                    "augmented_train_index",
                    "params:augmentation.examples_per_class",
                ],
                outputs="augmentation_examples",
                name="plot_augmentation_examples_node",
            ),
        ],
        tags="augmentation",
    )
