"""Wires the demo: the synthetic smear set written into the image folder (`raw_images`), which the
stages then read like any dataset. Part of every pipeline that reads the image folder when the run's
parameters ask for a synthetic set (`demo.synthetic_dataset`, set by conf/demo)."""

from kedro.pipeline import Node, Pipeline

from .nodes import make_synthetic_smears


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                make_synthetic_smears,
                inputs="params:demo.synthetic_dataset",
                outputs="raw_images",
                name="make_synthetic_smears_node",
            )
        ],
        tags="demo",
    )
