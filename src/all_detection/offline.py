"""The project's pipelines run outside a Kedro session, in this process: by tests, benchmarks and
notebooks that feed them data and parameters of their own instead of the catalog's and conf's."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kedro.io import AbstractDataset, DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner

from all_detection.configuration import parameter_feed


def run_in_process(
    pipeline: Pipeline,
    parameters: dict[str, Any],
    data: Mapping[str, Any] | None = None,
    outputs: Iterable[str] | None = None,
) -> dict[str, Any]:
    """`pipeline` run by Kedro's runner, fed `parameters` as a Kedro context feeds them (`params:a` and
    `params:a.b`) and its `data`: each input it reads (`raw_images`...) as a value or as a Kedro dataset
    to load it from, and any output to save as the catalog would (a dataset: the runner releases an
    in-memory output once its last reader has run). Returns the `outputs` asked for, loaded; by
    default the pipeline's free outputs (ask for one with `pipeline.to_outputs(name)`)."""
    fed = {**parameter_feed(parameters), **(data or {})}
    catalog = DataCatalog(
        {
            name: value if isinstance(value, AbstractDataset) else MemoryDataset(value, copy_mode="assign")
            for name, value in fed.items()
        }
    )
    free = SequentialRunner().run(pipeline, catalog)
    return {name: catalog[name].load() for name in (free if outputs is None else outputs)}
