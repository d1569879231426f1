"""Project pipelines: one per stage of the data's journey (`pipelines/`, found by `find_pipelines()`),
and the studies (`studies/`), each made of the stages' pipelines."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

from all_detection.studies import cross_validation, input_mode_comparison, protocol_comparison

# The studies train several models each and repeat the data stages they need; like inference (which
# scores a folder of new images, inference.input_dir), they run only when asked for by name.
STUDIES = {
    "protocol_comparison": protocol_comparison,
    "cross_validation": cross_validation,
    "input_mode_comparison": input_mode_comparison,
}
ON_DEMAND = frozenset({"inference", *STUDIES})


def register_pipelines() -> dict[str, Pipeline]:
    """Every stage (`pipelines/`) and study, and `__default__`: the stages but inference, chained."""
    pipelines = find_pipelines(raise_errors=True)
    pipelines.update({name: study.create_pipeline() for name, study in STUDIES.items()})
    chained = [pipeline for name, pipeline in pipelines.items() if name not in ON_DEMAND]
    pipelines["__default__"] = sum(chained, Pipeline([]))
    return pipelines
