"""Wires the protocol comparison: the shared data stages, then one model run per protocol, namespaced
(`paper`, `leakage_free`), then the comparison, its figure and one MLflow child run per protocol."""

from kedro.pipeline import Node, Pipeline

from all_detection.pipelines import augmentation, ingestion, preprocessing
from all_detection.studies.wiring import child_runs_node, model_run, variant

from .nodes import (
    PROTOCOLS,
    augment_then_split,
    compare_protocols,
    comparison_mlflow_metrics,
    plot_protocol_comparison,
)

SPLIT_STACKS = ["train_images", "train_index", "val_images", "val_index", "test_images", "test_index"]
VIEWS = ["augmented_train_images", "augmented_train_index"]


def create_pipeline(**kwargs) -> Pipeline:
    data = ingestion.create_pipeline() + preprocessing.create_pipeline() + augmentation.create_pipeline()
    paper_split = Pipeline(
        [
            Node(
                augment_then_split,
                inputs=[*SPLIT_STACKS, "stain_reference", "params:augmentation", "params:split"],
                outputs=[
                    "paper.augmented_train_images",
                    "paper.augmented_train_index",
                    "paper.val_images",
                    "paper.val_index",
                    "paper.test_images",
                    "paper.test_index",
                ],
                name="augment_then_split_node",
                namespace="paper",
            )
        ]
    )
    # Under the paper's protocol the training views are the training images: online training reads them.
    paper = variant(
        model_run(),
        "paper",
        shared=["data_quality", "raw_images", "stain_reference"],
        renamed={
            "train_images": "paper.augmented_train_images",
            "train_index": "paper.augmented_train_index",
        },
    )
    leakage_free = variant(
        model_run(),
        "leakage_free",
        shared=[*SPLIT_STACKS, *VIEWS, "data_quality", "raw_images", "stain_reference"],
    )
    comparison = Pipeline(
        [
            Node(
                compare_protocols,
                # The leakage-free protocol tests on the shared test split, the paper's on its own views.
                inputs=[
                    "paper.metrics",
                    "paper.test_predictions",
                    "paper.test_index",
                    "leakage_free.metrics",
                    "leakage_free.test_predictions",
                    "test_index",
                ],
                outputs="protocol_comparison",
                name="compare_protocols_node",
            ),
            Node(
                plot_protocol_comparison,
                inputs="protocol_comparison",
                outputs="protocol_comparison_figure",
                name="plot_protocol_comparison_node",
            ),
            Node(
                comparison_mlflow_metrics,
                inputs="protocol_comparison",
                outputs="protocol_comparison_metrics",
                name="protocol_comparison_metrics_node",
            ),
            child_runs_node({name: name for name in PROTOCOLS}, "protocol_runs"),
        ]
    )
    return Pipeline([data, paper_split, paper, leakage_free, comparison], tags="protocol_comparison")
