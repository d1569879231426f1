"""Wires cross-validation: the shared data stages, the fold assignment, one model per fold, the summary,
its figure, and one MLflow child run per fold."""

from kedro.pipeline import Node, Pipeline

from all_detection.pipelines import ingestion, preprocessing

from .nodes import assign_folds, cross_validate, cross_validation_mlflow_metrics, plot_folds, summarise_folds


def create_pipeline(**kwargs) -> Pipeline:
    folds = Pipeline(
        [
            Node(
                assign_folds,
                inputs=[
                    "train_index",
                    "val_index",
                    "test_index",
                    "params:cross_validation",
                    "params:split.seed",
                ],
                outputs="cross_validation_folds",
                name="assign_folds_node",
            ),
            # The fold count is a parameter, so the folds run in one node, each through the project's
            # augmentation, training and evaluation pipelines (run in memory), not as fixed namespaces.
            Node(
                cross_validate,
                inputs=["train_images", "val_images", "test_images", "cross_validation_folds", "parameters"],
                outputs=["cross_validation_fold_metrics", "cross_validation_fold_runs"],
                name="cross_validate_node",
            ),
            Node(
                summarise_folds,
                inputs="cross_validation_fold_metrics",
                outputs="cross_validation",
                name="summarise_folds_node",
            ),
            Node(
                plot_folds,
                inputs="cross_validation",
                outputs="cross_validation_figure",
                name="plot_folds_node",
            ),
            Node(
                cross_validation_mlflow_metrics,
                inputs="cross_validation",
                outputs="cross_validation_metrics",
                name="cross_validation_mlflow_metrics_node",
            ),
        ]
    )
    return Pipeline(
        [ingestion.create_pipeline(), preprocessing.create_pipeline(), folds], tags="cross_validation"
    )
