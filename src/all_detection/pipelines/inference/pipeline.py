"""Wires inference: check every file of the folder to score, then score the usable images with the
trained model (the catalog's `model`, or the MLflow model inference.model_uri names)."""

from kedro.pipeline import Node, Pipeline

from .nodes import keep_this_run, scan_inference_folder, score_images


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                scan_inference_folder,
                inputs=["inference_images", "params:ingestion"],
                outputs="inference_files",
                name="scan_inference_folder_node",
            ),
            Node(
                score_images,
                inputs=[
                    "inference_files",
                    "inference_images",
                    "model",
                    "params:inference",
                    "params:preprocessing",
                    "params:ingestion",
                ],
                outputs="predictions",
                name="score_images_node",
            ),
            Node(
                keep_this_run,
                inputs="predictions",
                outputs="predictions_of_run",
                name="keep_predictions_of_run_node",
            ),
        ],
        tags="inference",
    )
