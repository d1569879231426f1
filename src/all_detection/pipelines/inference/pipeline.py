"""Wires inference: check every file under the input folder, load the trained model, score usable images."""

from kedro.pipeline import Node, Pipeline

from .nodes import keep_this_run, load_classifier, scan_inference_folder, score_images


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                scan_inference_folder,
                inputs=["params:inference", "params:ingestion"],
                outputs="inference_files",
                name="scan_inference_folder_node",
            ),
            Node(
                load_classifier,
                inputs="params:inference",
                outputs="classifier",
                name="load_classifier_node",
            ),
            Node(
                score_images,
                inputs=[
                    "inference_files",
                    "classifier",
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
