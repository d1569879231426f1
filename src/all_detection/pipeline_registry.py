"""Project pipelines: one per stage of the data's journey, found by `find_pipelines()`."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# Run only when asked for by name: inference scores a folder of new images (inference.input_dir); the
# studies train several models each and repeat the data stages they need.
ON_DEMAND = frozenset({"inference", "protocol_comparison", "cross_validation", "input_mode_comparison"})


def register_pipelines() -> dict[str, Pipeline]:
    """Every pipeline under `pipelines/`, and `__default__`: all of them but the on-demand ones, chained."""
    pipelines = find_pipelines(raise_errors=True)
    chained = [pipeline for name, pipeline in pipelines.items() if name not in ON_DEMAND]
    pipelines["__default__"] = sum(chained, Pipeline([]))
    return pipelines
