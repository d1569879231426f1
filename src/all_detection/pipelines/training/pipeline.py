"""Wires training: cache the frozen base's features once, fit the head and fine-tune above the cut (or
train online), add test-time augmentation to the saved model, register it."""

from kedro.pipeline import Node, Pipeline

from all_detection.core.model import with_test_time_augmentation
from all_detection.serving import register_model

from .nodes import cache_base_features, train_classifier


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                cache_base_features,
                inputs=[
                    "augmented_train_images",
                    "val_images",
                    "test_images",
                    "params:model",
                    "params:training",
                    "params:split.seed",
                ],
                outputs=["train_features", "val_features", "test_features", "feature_cache"],
                name="cache_base_features_node",
            ),
            Node(
                train_classifier,
                inputs=[
                    "train_features",
                    "val_features",
                    "augmented_train_index",
                    "train_images",
                    "train_index",
                    "val_images",
                    "val_index",
                    "feature_cache",
                    "params:model",
                    "params:augmentation",
                    "params:training",
                    "params:split.seed",
                ],
                outputs=["trained_classifier", "training_history", "training_summary"],
                name="train_classifier_node",
            ),
            # The saved model averages over the views evaluation.tta names, so evaluation, inference and
            # MLflow serving all apply the same test-time augmentation.
            Node(
                with_test_time_augmentation,
                inputs=["trained_classifier", "params:evaluation.tta"],
                outputs="model",
                name="add_test_time_augmentation_node",
            ),
            Node(
                register_model,
                inputs=["model", "test_images"],
                outputs="model_registration",
                name="register_model_node",
                # The studies (protocol_comparison...) train several models and register none of them.
                tags="registration",
            ),
        ],
        tags="training",
    )
