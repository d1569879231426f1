"""Wires cross-validation: the shared data stages, the fold assignment, then per fold (namespaces
`fold_1` ... `fold_k`) its splits, augmentation, training and evaluation; then the summary, its figure
and one MLflow child run per fold.

The number of folds shapes the pipeline, so it is read when the pipelines are registered: from the
run's own parameters (its --env and --params) in a `kedro run`, else (kedro-viz, a notebook) from the
project's conf for KEDRO_ENV. A run whose pipeline was registered with another count is refused before
it starts (`all_detection.checks.check_pipeline_shape`).
"""

from pathlib import Path

from kedro.pipeline import Node, Pipeline

from all_detection.configuration import shaping_parameters
from all_detection.layout import SPLITS, fold_names
from all_detection.pipelines import augmentation, ingestion, preprocessing
from all_detection.studies.wiring import child_runs_node, model_run, variant

from .nodes import (
    assign_folds,
    cross_validation_mlflow_metrics,
    fold_splits,
    plot_folds,
    split_fold,
    summarise_folds,
)


def configured_folds(project_path: Path | None = None) -> int:
    """`cross_validation.folds` of the run being set up or, outside a run, as the project's
    configuration gives it (`all_detection.configuration.shaping_parameters`)."""
    parameters = shaping_parameters(project_path)
    if parameters is None:
        raise RuntimeError(
            "The cross_validation pipeline reads its number of folds from the project's conf/: run Kedro "
            "from inside the project folder"
        )
    return int(parameters["cross_validation"]["folds"])


def fold_run(fold: str) -> Pipeline:
    """One fold: its splits of the pooled images, then the project's augmentation, training and
    evaluation on them, every dataset under `<fold>.`."""
    splits = Node(
        split_fold,
        inputs=["train_images", "val_images", "test_images", f"{fold}.fold_index"],
        outputs=[f"{fold}.{split}_{kind}" for split in SPLITS for kind in ("images", "index")],
        name="split_fold_node",
        namespace=fold,
    )
    # The fold's own training images give the stain the model normalises to or augments around.
    stages = variant(
        preprocessing.stain_measurement() + augmentation.create_pipeline() + model_run(),
        fold,
        shared=["data_quality", "raw_images"],
    )
    return Pipeline([splits]) + stages


def create_pipeline(**kwargs) -> Pipeline:
    folds = fold_names(configured_folds())
    assignment = Pipeline(
        [
            Node(
                assign_folds,
                inputs=[
                    *(f"{split}_index" for split in SPLITS),
                    "params:cross_validation",
                    "params:split.seed",
                ],
                outputs="cross_validation_folds",
                name="assign_folds_node",
            ),
            Node(
                fold_splits,
                inputs=["cross_validation_folds", "params:split"],
                outputs=[f"{fold}.fold_index" for fold in folds],
                name="fold_splits_node",
            ),
        ]
    )
    summary = Pipeline(
        [
            Node(
                summarise_folds,
                inputs={fold: f"{fold}.metrics" for fold in folds},
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
            child_runs_node({fold: fold for fold in folds}, "cross_validation_fold_runs"),
        ]
    )
    return Pipeline(
        [ingestion.create_pipeline(), preprocessing.create_pipeline(), assignment,
         *(fold_run(fold) for fold in folds), summary],
        tags="cross_validation",
    )  # fmt: skip
