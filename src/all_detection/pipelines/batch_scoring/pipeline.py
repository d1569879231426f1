"""Wires batch scoring on Spark: list the folder, score its files on Spark's executors with the MLflow
model, write the partitioned Parquet table, then read it back for the run's summary."""

from kedro.pipeline import Node, Pipeline

from .nodes import list_archive, score_archive, summarise_batch_scoring


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                list_archive,
                inputs=["inference_images", "params:ingestion"],
                outputs="archive_files",
                name="list_archive_node",
            ),
            Node(
                score_archive,
                inputs=[
                    "archive_files",
                    "archive_image_bytes",
                    "inference_images",
                    "params:inference",
                    "params:preprocessing",
                    "params:ingestion",
                ],
                outputs="batch_predictions",
                name="score_archive_node",
            ),
            Node(
                summarise_batch_scoring,
                inputs=["batch_predictions", "archive_files"],
                outputs="batch_scoring_summary",
                name="summarise_batch_scoring_node",
            ),
        ],
        tags="batch_scoring",
    )
