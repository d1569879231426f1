"""Project pipelines: the stages of the data's journey (`pipelines/`), in its order, and the studies
(`studies/`), each made of the stages' pipelines.

The registry lists them itself rather than through `find_pipelines()`, which discovers only
`pipelines/` and refuses a requested name it did not find there (`kedro run --pipelines
cross_validation`); a test keeps this list and the two folders in step.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from all_detection.configuration import shaping_parameters, writes_synthetic_set
from all_detection.pipelines import (
    augmentation,
    batch_scoring,
    demo,
    evaluation,
    inference,
    ingestion,
    preprocessing,
    shortcut_audit,
    training,
)
from all_detection.studies import cross_validation, input_mode_comparison, protocol_comparison

#: `kedro run` (`__default__`): the stages from the image folder to the evaluated and audited model,
#: in order.
STAGES = {
    "ingestion": ingestion,
    "preprocessing": preprocessing,
    "augmentation": augmentation,
    "training": training,
    "evaluation": evaluation,
    "shortcut_audit": shortcut_audit,
}
#: Run only when asked for by name: inference scores a folder of new images (inference.input_dir),
#: batch_scoring the same on Spark; the studies train several models each and repeat the data stages
#: they need.
ON_DEMAND = {
    "inference": inference,
    "batch_scoring": batch_scoring,
    "protocol_comparison": protocol_comparison,
    "cross_validation": cross_validation,
    "input_mode_comparison": input_mode_comparison,
}


#: The demo's synthetic set, written into the image folder (`raw_images`). Only when the parameters
#: ask for one (`demo.synthetic_dataset`, set by conf/demo) is it registered, and then it comes first
#: in every pipeline that reads the image folder, so `kedro run --env demo` makes its data and then
#: uses it; elsewhere nothing names the parameter it reads (kedro-viz would warn that it is missing).
DEMO = {"demo": demo}


def register_pipelines() -> dict[str, Pipeline]:
    """Every stage and study by name, `__default__` (the stages, chained), and the demo if asked for."""
    synthetic = writes_synthetic_set(shaping_parameters())
    modules = {**(DEMO if synthetic else {}), **STAGES, **ON_DEMAND}
    pipelines = {name: module.create_pipeline() for name, module in modules.items()}
    pipelines["__default__"] = sum((pipelines[name] for name in STAGES), Pipeline([]))
    if synthetic:
        synthetic_set = pipelines["demo"]
        pipelines = {
            name: synthetic_set + pipeline if "raw_images" in pipeline.inputs() else pipeline
            for name, pipeline in pipelines.items()
        }
    return pipelines
