"""Kedro hooks: parameters are checked before a run starts, the demo set is written before a run reads
it, and every MLflow run says what it ran on."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from kedro.framework.hooks import hook_impl

from all_detection.parameters import check_parameters, check_paths, sections_read
from all_detection.synthetic import write_synthetic_dataset

logger = logging.getLogger(__name__)


class ParameterCheckHooks:
    """Refuse a run whose parameters cannot work before it does anything (`all_detection.parameters`):
    the values as soon as the catalog exists, the paths its pipeline will read just before it starts.
    Registered last, so it runs before the other hooks (before MLflow opens a run or the demo set is
    written)."""

    @hook_impl
    def after_catalog_created(self, parameters: dict[str, Any], **kwargs: Any) -> None:
        check_parameters(parameters.get("parameters", {}))

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        check_paths(catalog.load("parameters"), sections_read(pipeline))


class RunEndingHooks:
    """An interrupted run is recorded as one: on Ctrl-C (SIGINT) or SIGTERM the open MLflow runs are
    marked KILLED, tagged with the signal and the node the run stopped in, and the process then ends
    as that signal ends any process (exit status 130 or 143), instead of MLflow recording FINISHED at
    exit (Ctrl-C) or nothing at all (SIGTERM). Nodes' outputs are saved only when a node finishes,
    and arrays through a temporary file and a rename, so an interrupted node leaves none behind.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.node: str | None = None
        self.previous: dict[int, Any] = {}

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        self.node = None
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self.previous = {number: signal.signal(number, self.interrupted) for number in self.SIGNALS}

    @hook_impl
    def before_node_run(self, node: Any, **kwargs: Any) -> None:
        self.node = node.name

    @hook_impl
    def after_pipeline_run(self, **kwargs: Any) -> None:
        self.restore()

    @hook_impl
    def on_pipeline_error(self, **kwargs: Any) -> None:
        self.restore()

    def restore(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}

    def interrupted(self, number: int, frame: Any) -> None:
        name = signal.Signals(number).name
        stopped_in = self.node or "(before the first node)"
        while (run := mlflow.active_run()) is not None:
            mlflow.set_tags({"ended_by": name, "stopped_in_node": stopped_in})
            mlflow.end_run(status="KILLED")
            logger.error(
                "Interrupted by %s in %s: MLflow run %s marked KILLED", name, stopped_in, run.info.run_id
            )
        # End as the signal ends any process, so the shell sees 130 (SIGINT) or 143 (SIGTERM).
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)


class TrackingStoreHooks:
    """Create the MLflow tracking store and experiment under a file lock, before kedro-mlflow opens them.

    The first run in a fresh clone creates `mlflow.db` and migrates its schema; two such runs at once
    raced in MLflow's migration (`duplicate column name`) and one crashed. Here kedro-mlflow's own setup
    runs first under an exclusive lock beside the SQLite file, so the second run waits for the first
    and then finds the store and experiment made; kedro-mlflow's hook then repeats the setup at no
    cost. Stores that are not SQLite files are left to their servers.
    """

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        from kedro_mlflow.config.kedro_mlflow_config import KedroMlflowConfig  # noqa: PLC0415

        if mlflow.active_run() is not None:
            return
        context.config_loader.config_patterns.setdefault("mlflow", ["mlflow*", "mlflow*/**", "**/mlflow*"])
        config = KedroMlflowConfig.model_validate({**context.config_loader["mlflow"]})
        uri = str(config.server.mlflow_tracking_uri)
        if not uri.startswith("sqlite:///"):
            return
        database = Path(uri.removeprefix("sqlite:///"))
        database = database if database.is_absolute() else Path(context.project_path) / database
        database.parent.mkdir(parents=True, exist_ok=True)
        with database.with_name(f"{database.name}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            config.setup(context)


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


class RunRecordHooks:
    """Tag each MLflow run with where and how it ran, and log the data's provenance once it is known.

    Tags: environment, pipelines, training and input modes, base weights asked for, git commit, device.
    Once the manifest exists: its content hash and file counts, so two runs on different data never
    look alike in the MLflow UI. Registered after kedro-mlflow's hook opens the run.
    """

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        if mlflow.active_run() is None:
            return
        from all_detection.core.hardware import describe_device  # noqa: PLC0415 - imports Keras

        parameters = catalog.load("parameters")
        mlflow.set_tags(
            {
                "environment": run_params.get("env") or "local",
                "pipelines": ",".join(run_params.get("pipeline_names") or ["__default__"]),
                "training_mode": parameters["training"]["mode"],
                "input_mode": parameters["preprocessing"]["input_mode"],
                "base_weights": str(parameters["model"]["base_weights"]),
                "git_commit": _git_commit(),
                "device": describe_device(),
            }
        )

    @hook_impl
    def after_node_run(self, node: Any, catalog: Any, inputs: dict, outputs: dict, **kwargs: Any) -> None:
        if "manifest" in outputs and mlflow.active_run() is not None:
            mlflow.log_params(manifest_provenance(outputs["manifest"]))


def manifest_provenance(manifest: pd.DataFrame) -> dict[str, Any]:
    """A content hash of the manifest and its counts, as MLflow parameters (`data.*`)."""
    rows = pd.util.hash_pandas_object(manifest[["path", "label", "status", "sha256", "split"]], index=False)
    usable = manifest[(manifest["status"] == "ok") & (manifest["folder"] == "Original")]
    return {
        "data.manifest_sha256": hashlib.sha256(rows.to_numpy().tobytes()).hexdigest(),
        "data.files": len(manifest),
        "data.quarantined": int((manifest["status"] == "quarantined").sum()),
        "data.usable_images": len(usable),
        **{
            f"data.{split}_images": int((usable["split"] == split).sum())
            for split in ("train", "val", "test")
        },
    }


def _git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit
