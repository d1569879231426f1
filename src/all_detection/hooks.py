"""Kedro hooks: the `demo` environment writes its synthetic smear set before the pipeline reads it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from all_detection.synthetic import write_synthetic_dataset

logger = logging.getLogger(__name__)


class SyntheticDemoHooks:
    """Generate the synthetic dataset at `dataset.root` when the parameters ask for one (`demo` env).

    Nothing happens unless the parameters hold `demo.synthetic_dataset`, which only `conf/demo` sets.
    """

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        parameters = catalog.load("parameters")
        recipe = (parameters.get("demo") or {}).get("synthetic_dataset")
        if recipe:
            ensure_synthetic_dataset(parameters["dataset"]["root"], recipe)


def ensure_synthetic_dataset(root: str | Path, recipe: dict[str, Any]) -> Path:
    """Write the synthetic set at `root` unless the same recipe already wrote it there.

    A marker file beside the folder (not inside it, where ingestion would count it) records the
    recipe. A folder at `root` without the marker is someone's data and is never overwritten.
    """
    root = Path(root)
    marker = root.with_name(f"{root.name}.synthetic.json")
    if root.exists():
        if not marker.exists():
            raise FileExistsError(
                f"'{root}' exists and was not written by the synthetic demo generator; refusing to "
                "overwrite it. Point dataset.root in conf/demo/parameters.yml at a new folder."
            )
        if json.loads(marker.read_text()) == recipe:
            logger.info("Synthetic demo set already at %s (%s)", root, recipe)
            return root
        shutil.rmtree(root)
    logger.info("Writing the synthetic demo set to %s (%s)", root, recipe)
    write_synthetic_dataset(root, **recipe)
    marker.write_text(json.dumps(recipe, indent=2, sort_keys=True))
    return root
