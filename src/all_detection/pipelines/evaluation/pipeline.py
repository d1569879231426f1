"""Wires evaluation: predict both held-out splits, score them, then report to files, MLflow and figures
(the model card follows the shortcut audit, `pipelines/shortcut_audit`)."""

from kedro.pipeline import Node, Pipeline

from all_detection.serving import record_model_version

from .figures import (
    plot_confusion_matrix,
    plot_gradcam,
    plot_misclassified,
    plot_reliability_diagram,
    plot_roc_curves,
    plot_training_curves,
)
from .nodes import evaluate_split, predict_split
from .report import assemble_metrics, measure_leakage, to_mlflow_metrics, write_classification_report


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            *(
                Node(
                    predict_split,
                    inputs=[
                        "model",
                        f"{split}_images",
                        f"{split}_index",
                        "params:evaluation.predict_batch_size",
                    ],
                    outputs=f"{split}_predictions",
                    name=f"predict_{split}_node",
                )
                for split in ("val", "test")
            ),
            *(
                Node(
                    evaluate_split,
                    inputs=[f"{split}_predictions", "params:evaluation", "params:split.seed"],
                    outputs=f"{split}_metrics",
                    name=f"evaluate_{split}_node",
                )
                for split in ("val", "test")
            ),
            Node(
                measure_leakage,
                inputs=["augmented_train_index", "val_index", "test_index"],
                outputs="split_leakage",
                name="measure_leakage_node",
            ),
            Node(
                assemble_metrics,
                inputs=[
                    "val_metrics",
                    "test_metrics",
                    "training_summary",
                    "train_index",
                    "augmented_train_index",
                    "split_leakage",
                    "params:preprocessing",
                    "params:augmentation",
                    "params:evaluation.tta",
                ],
                outputs="metrics",
                name="assemble_metrics_node",
            ),
            # From the splits' metrics, not the assembled metrics.json, so the test numbers are logged
            # a step before the audit's and lead the run's page in the MLflow UI.
            Node(
                to_mlflow_metrics,
                inputs=["test_metrics", "val_metrics", "training_history"],
                outputs="evaluation_metrics",
                name="to_mlflow_metrics_node",
            ),
            Node(
                write_classification_report,
                inputs=["val_predictions", "test_predictions"],
                outputs="classification_report",
                name="write_classification_report_node",
            ),
            Node(
                plot_confusion_matrix,
                inputs="test_predictions",
                outputs="confusion_matrix_figure",
                name="plot_confusion_matrix_node",
            ),
            Node(
                plot_roc_curves,
                inputs="test_predictions",
                outputs="roc_curves_figure",
                name="plot_roc_curves_node",
            ),
            Node(
                plot_training_curves,
                inputs="training_history",
                outputs="training_curves_figure",
                name="plot_training_curves_node",
            ),
            Node(
                plot_reliability_diagram,
                inputs=["test_predictions", "params:evaluation.ece_bins"],
                outputs="reliability_diagram_figure",
                name="plot_reliability_diagram_node",
            ),
            Node(
                plot_gradcam,
                inputs=["model", "test_images", "test_predictions", "params:evaluation.gradcam_per_class"],
                outputs="gradcam_figure",
                name="plot_gradcam_node",
            ),
            Node(
                plot_misclassified,
                inputs=["test_images", "test_predictions", "params:evaluation.misclassified_max"],
                outputs="misclassified_figure",
                name="plot_misclassified_node",
            ),
            # The registered version's description and tags, its test metrics, and the champion alias.
            Node(
                record_model_version,
                inputs=["model_registration", "metrics", "manifest", "params:dataset"],
                outputs="model_version",
                name="record_model_version_node",
                # As register_model_node: the studies register no model.
                tags="registration",
            ),
        ],
        tags="evaluation",
    )
