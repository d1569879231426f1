"""Project pipelines: the stages of the data's journey (`pipelines/`), in its order, and the studies
(`studies/`), each made of the stages' pipelines.

The registry lists them itself rather than through `find_pipelines()`, which discovers only
`pipelines/` and refuses a requested name it did not find there (`kedro run --pipelines
cross_validation`); a test keeps this list and the two folders in step.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from all_detection.pipelines import augmentation, evaluation, inference, ingestion, preprocessing, training
from all_detection.studies import cross_validation, input_mode_comparison, protocol_comparison

#: `kedro run` (`__default__`): the stages from the image folder to the evaluated model, in order.
STAGES = {
    "ingestion": ingestion,
    "preprocessing": preprocessing,
    "augmentation": augmentation,
    "training": training,
    "evaluation": evaluation,
}
#: Run only when asked for by name: inference scores a folder of new images (inference.input_dir);
#: the studies train several models each and repeat the data stages they need.
ON_DEMAND = {
    "inference": inference,
    "protocol_comparison": protocol_comparison,
    "cross_validation": cross_validation,
    "input_mode_comparison": input_mode_comparison,
}


def register_pipelines() -> dict[str, Pipeline]:
    """Every stage and study by name, and `__default__`: the stages, chained."""
    pipelines = {name: module.create_pipeline() for name, module in {**STAGES, **ON_DEMAND}.items()}
    pipelines["__default__"] = sum((pipelines[name] for name in STAGES), Pipeline([]))
    return pipelines
