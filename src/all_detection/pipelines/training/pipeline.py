"""Wires training as `training.mode` asks: `cached` caches the frozen base's features once and fits
the head on them (fine-tuning above the cut), `online` trains on images augmented every epoch; then
adds test-time augmentation to the saved model and registers it.

The mode shapes the pipeline, so it is read when the pipelines are registered, like the number of
cross-validation folds (`all_detection.configuration.shaping_parameters`); a run whose pipeline was
registered for the other mode is refused before it starts.
"""

from kedro.pipeline import Node, Pipeline

from all_detection.configuration import shaping_parameters
from all_detection.core.model import with_test_time_augmentation
from all_detection.serving import servable_model

from .nodes import cache_base_features, describe_colour_range, fit_head, fit_online

TRAINED = ["trained_classifier", "training_history", "training_summary"]


def cached_training() -> list[Node]:
    return [
        Node(
            cache_base_features,
            inputs=[
                "augmented_train_images",
                "val_images",
                "test_images",
                "stain_reference",
                "params:model",
                "params:preprocessing",
                "params:training",
                "params:split.seed",
            ],
            outputs=["train_features", "val_features", "test_features", "feature_cache"],
            name="cache_base_features_node",
        ),
        Node(
            fit_head,
            inputs=[
                "train_features",
                "val_features",
                "augmented_train_index",
                "val_images",
                "val_index",
                "feature_cache",
                "stain_reference",
                "params:model",
                "params:preprocessing",
                "params:training",
                "params:split.seed",
            ],
            outputs=TRAINED,
            name="fit_head_node",
        ),
    ]


def online_training() -> list[Node]:
    return [
        Node(
            fit_online,
            inputs=[
                "train_images",
                "train_index",
                "val_images",
                "val_index",
                "stain_reference",
                "params:model",
                "params:preprocessing",
                "params:augmentation",
                "params:training",
                "params:split.seed",
            ],
            outputs=TRAINED,
            name="fit_online_node",
        )
    ]


def create_pipeline(**kwargs) -> Pipeline:
    parameters = shaping_parameters()
    mode = parameters["training"]["mode"] if parameters is not None else "cached"
    fitting = {"cached": cached_training, "online": online_training}[mode]()
    return Pipeline(
        [
            # Tagged with their mode, so a run can tell which mode its pipeline was registered for.
            Pipeline(fitting, tags=mode),
            # The saved model averages over the views evaluation.tta names, so evaluation, inference and
            # MLflow serving all apply the same test-time augmentation.
            Node(
                with_test_time_augmentation,
                inputs=["trained_classifier", "params:evaluation.tta"],
                outputs="model",
                name="add_test_time_augmentation_node",
            ),
            # The training images' colour range travels with the registered model (the smear page's
            # warning for an image unlike them).
            Node(
                describe_colour_range,
                inputs=[
                    "train_index",
                    "val_index",
                    "raw_images",
                    "params:preprocessing",
                    "params:ingestion",
                    "params:shortcut_audit",
                ],
                outputs="colour_range",
                name="describe_colour_range_node",
                tags="registration",
            ),
            # Saving it to the catalog's model_registration registers it in MLflow.
            Node(
                servable_model,
                inputs=["model", "test_images", "params:dataset.synthetic", "colour_range"],
                outputs="model_registration",
                name="register_model_node",
                # The studies (protocol_comparison...) train several models and register none of them.
                tags="registration",
            ),
        ],
        tags="training",
    )
