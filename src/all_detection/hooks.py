"""Kedro hooks: parameters and the folders a run uses are checked before it starts, the MLflow store is
made once however many runs start together, interrupted runs are recorded as such, and every MLflow run
says what it ran on."""

from __future__ import annotations

import fcntl
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import click
import mlflow
import pandas as pd
from kedro.framework.hooks import hook_impl

from all_detection.checks import check_parameters, check_pipeline_shape, check_sources
from all_detection.datasets import SPARK_NOT_INSTALLED
from all_detection.layout import OK, SPLITS
from all_detection.tracking_store import relocate_store

logger = logging.getLogger(__name__)


class ParameterCheckHooks:
    """Refuse a run whose parameters cannot work before it does anything (`all_detection.checks`):
    the values as soon as the project's context exists (before the pipelines, and with them
    TensorFlow, are imported: a bad value fails in seconds), the folders and files its pipeline will
    read or write just before it starts. Registered last, so it runs before the other hooks (before
    MLflow opens a run)."""

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        # The configuration's parameters with the run's --params applied; `context.params` would
        # import every pipeline first, to validate parameters against their nodes' type hints.
        check_parameters(context.config_loader["parameters"])

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        parameters = catalog.load("parameters")
        check_sources(parameters, pipeline, catalog, Path(run_params["project_path"]))
        check_pipeline_shape(parameters, pipeline)


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

    A store whose artifacts are kept in the project (mlflow.yml's relative `artifact_location`) is first
    pointed at this project folder's, should the project have been moved or copied
    (`all_detection.tracking_store`).
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
        experiment = config.tracking.experiment
        artifacts = experiment.create_experiment_kwargs.artifact_location
        with database.with_name(f"{database.name}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if artifacts and "://" not in artifacts and not Path(artifacts).is_absolute():
                # The store's artifacts live in the project: a moved or copied project keeps them.
                relocate_store(database, experiment.name, Path(context.project_path) / artifacts)
            config.setup(context)


class SparkHooks:
    """Start the SparkSession a run's Spark datasets use, from `conf/<env>/spark.yml`, when a pipeline that
    reads or writes one runs (`batch_scoring`); other runs never start Spark, nor need pyspark.

    Every key of spark.yml is a Spark setting: `spark.master` (`local[*]` by default, a cluster's master
    URL, or `spark.remote` for a Spark Connect server) and the rest go to the session as they are, so a
    cluster is configuration only. With a local master the executors' Python is this one
    (`PYSPARK_PYTHON`, unless set), which has the project installed.
    """

    def __init__(self) -> None:
        self.settings: dict[str, Any] = {}
        self.project_name = "all_detection"

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        context.config_loader.config_patterns.setdefault("spark", ["spark*", "spark*/**"])
        self.settings = {key: str(value) for key, value in context.config_loader["spark"].items()}
        self.project_name = Path(context.project_path).name

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        if any("spark" in str(catalog.get_type(name) or "").lower() for name in pipeline.datasets()):
            spark_session(self.settings, self.project_name)


def spark_session(settings: dict[str, str], app_name: str) -> Any:
    """The SparkSession for `settings` (spark.yml's keys), made once per process and reused after."""
    try:
        from pyspark.sql import SparkSession  # noqa: PLC0415
    except ImportError:
        raise click.ClickException(SPARK_NOT_INSTALLED) from None
    if str(settings.get("spark.master", "")).startswith("local") and "spark.remote" not in settings:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as error:  # pyspark raises its own errors when the JVM does not start or answer
        raise click.ClickException(
            f"Spark did not start ({type(error).__name__}: {error}). Spark needs a Java 17 runtime "
            "(java on PATH or JAVA_HOME), and a cluster's master or Spark Connect address must answer: "
            "see conf/base/spark.yml."
        ) from None
    if hasattr(session, "sparkContext") and "spark.remote" not in settings:
        session.sparkContext.setLogLevel(settings.get("spark.log.level", "WARN"))
    where = settings.get("spark.remote") or session.conf.get("spark.master")
    logger.info("Spark %s, master %s", session.version, where)
    return session


class RunRecordHooks:
    """Tag each MLflow run with where and how it ran (the data it saw is logged by ingestion's
    `data_provenance`, an `MlflowRunDataDataset`).

    One tag per fact: kedro-mlflow's own (`kedro_version`, `project_path`...), then `env` always
    (Kedro's default `local` too), the runner's class name, the pipelines as a list, the Kedro session
    under its own name, `kedro_command` as the user typed it, the training and input modes, the base
    weights asked for, the git commit and the device. Registered after kedro-mlflow's hook opens the run.
    """

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        if mlflow.active_run() is None:
            return
        from all_detection.core.hardware import describe_device  # noqa: PLC0415 - imports Keras

        parameters = catalog.load("parameters")
        pipelines = ",".join(run_params.get("pipeline_names") or ["__default__"])
        command = typed_command(run_params)
        # kedro-mlflow's tags for facts tagged better below: the session's id as `run_id` (not MLflow's
        # run), and the --params, which the command and the run's parameters already hold.
        tagged = mlflow.get_run(mlflow.active_run().info.run_id).data.tags
        for duplicate in {"run_id", "runtime_params"} & set(tagged):
            mlflow.delete_tag(duplicate)
        mlflow.set_tags(
            {
                "mlflow.runName": run_name(pipelines, parameters),
                "mlflow.note.content": run_description(command, parameters),
                "kedro_command": command,
                "env": run_params.get("env") or "local",
                "kedro_session_id": str(run_params.get("run_id") or ""),
                # kedro-mlflow tags the runner object itself; its class name is what tells runs apart.
                "runner": _class_name(run_params.get("runner")),
                "pipeline_names": pipelines,
                "training_mode": parameters["training"]["mode"],
                "input_mode": parameters["preprocessing"]["input_mode"],
                "base_weights": str(parameters["model"]["base_weights"]),
                "git_commit": _git_commit(),
                "device": describe_device(),
            }
        )


def typed_command(run_params: dict[str, Any]) -> str:
    """The command that started the run: as typed when it came from the `kedro` command line, else the
    `kedro run` that does the same (a run started from Python: a notebook, a test)."""
    if Path(sys.argv[0]).name == "kedro":
        return shlex.join(["kedro", *sys.argv[1:]])
    command = ["kedro", "run"]
    pipelines = [name for name in run_params.get("pipeline_names") or [] if name != "__default__"]
    if pipelines:
        command.append(f"--pipeline={','.join(pipelines)}")
    if run_params.get("env"):
        command.append(f"--env={run_params['env']}")
    if run_params.get("runtime_params"):
        flat = pd.json_normalize(run_params["runtime_params"], sep=".").iloc[0].to_dict()
        command.append("--params=" + ",".join(f"{key}={value}" for key, value in flat.items()))
    return shlex.join(command)


def run_name(pipelines: str, parameters: dict[str, Any]) -> str:
    """What tells a run apart from the others, first, as the MLflow UI's runs table shows as much of a
    name as fits: `224px seed42 original reinhard cached default`, `synthetic 96px ...` for the demo."""
    training, preprocessing = parameters["training"], parameters["preprocessing"]
    return " ".join(
        [
            *(["synthetic"] if parameters["dataset"].get("synthetic") else []),
            f"{preprocessing['image_size']}px",
            f"seed{parameters['split']['seed']}",
            preprocessing["input_mode"],
            preprocessing.get("stain_normalisation", "none"),
            training["mode"],
            pipelines.replace("__default__", "default"),
        ]
    )


def run_description(command: str, parameters: dict[str, Any]) -> str:
    training, preprocessing = parameters["training"], parameters["preprocessing"]
    synthetic = parameters["dataset"].get("synthetic")
    kind = "**synthetic** smears (the demo's, not real data)" if synthetic else "smears"
    return (
        f"`{command}` on {kind} in `{parameters['dataset']['root']}`: "
        f"{training['mode']} training (VGG16 cut at {training['cache_at']}, class weights "
        f"{training['class_weight']}, stain normalisation "
        f"{preprocessing.get('stain_normalisation', 'none')}, TTA {parameters['evaluation']['tta']}) on "
        f"{preprocessing['input_mode']} images at {preprocessing['image_size']} px, split seed "
        f"{parameters['split']['seed']}."
    )


def _class_name(runner: Any) -> str:
    if runner is None:
        return "SequentialRunner"
    if isinstance(runner, str):  # "<kedro.runner.sequential_runner.SequentialRunner object at 0x...>"
        return runner.strip("<>").split(" ")[0].rsplit(".", 1)[-1]
    return type(runner).__name__


class RunSummaryHooks:
    """A few lines at the end of every run: its headline figures, where its outputs are, its MLflow run
    and the command to try next. Registered last, so it runs while the MLflow run is still open."""

    WATCHED = ("metrics", "training_summary", "data_quality", "predictions", "shortcut_audit")

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        self.seen = {}

    @hook_impl
    def after_node_run(self, node: Any, catalog: Any, inputs: dict, outputs: dict, **kwargs: Any) -> None:
        self.seen |= {name: outputs[name] for name in self.WATCHED if name in outputs}

    @hook_impl
    def after_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Any, catalog: Any, **kwargs: Any
    ) -> None:
        reports = [
            name
            for name in ("model_card", "metrics", "shortcut_audit", "predictions", "data_quality")
            if name in self.seen or (name == "model_card" and "shortcut_audit" in self.seen)
        ]
        paths = report_paths(catalog, reports)
        active, run = mlflow.active_run(), None
        if active is not None:
            # The run's name as tagged since it was opened (RunRecordHooks), read back from the store.
            name = mlflow.get_run(active.info.run_id).info.run_name
            run = (name, active.info.run_id, mlflow.get_tracking_uri())
        for line in run_summary(self.seen, paths, run):
            logger.info(line)


def report_paths(catalog: Any, names: list[str]) -> dict[str, str]:
    """Where each of the datasets `names` is written, from the catalog's configuration of it as the
    project resolved it (its `filepath`, or its wrapped dataset's for an MLflow artifact)."""
    configuration = catalog.config_resolver.config
    paths = {}
    for name in names:
        entry = configuration.get(name) or {}
        path = entry.get("filepath") or (entry.get("dataset") or {}).get("filepath")
        if path:
            paths[name] = str(path)
    return paths


def run_summary(seen: dict[str, Any], paths: dict[str, str], run: tuple[str, str, str] | None) -> list[str]:
    """The end-of-run lines from the outputs a run produced (`RunSummaryHooks.WATCHED`), the paths of
    its reports and its MLflow run (name, id, tracking URI)."""
    lines = ["Run summary"]
    quality = seen.get("data_quality")
    if quality:
        files, per_class = quality["files"], quality["images_per_class_and_split"]
        sizes = {split: sum(counts[split] for counts in per_class.values()) for split in SPLITS}
        lines.append(
            f"  Files: {files['total']} found (Original and Segmented), {files['ok']} readable, "
            f"{files['quarantined']} quarantined; images split train {sizes['train']}, validation "
            f"{sizes['val']}, test {sizes['test']}."
        )
    metrics = seen.get("metrics")
    if metrics:
        test, intervals = metrics["test"], metrics["test"]["confidence_intervals"]
        accuracy, f1 = intervals["accuracy"], intervals["macro_f1"]
        lines.append(
            f"  Test accuracy {test['accuracy']:.3f} [{accuracy[0]:.3f}, {accuracy[1]:.3f}], macro F1 "
            f"{test['macro_f1']:.3f} [{f1[0]:.3f}, {f1[1]:.3f}] on {test['n']} test images "
            f"({round(100 * intervals['level'])}% bootstrap intervals)."
        )
    audit = seen.get("shortcut_audit")
    if audit:
        colour = audit["null_models"]["colour_statistics"]
        swap = audit["counterfactuals"].get("stain_swap") or {}
        line = (
            f"  Shortcut audit: colour alone (no cell shapes) scores {colour['accuracy']:.3f} on the test "
            "images"
        )
        if swap.get("accuracy") is not None:
            line += (
                f"; given another class's stain the model scores {swap['accuracy']:.3f} "
                f"({100 * swap['follows_donor']:.1f}% of answers follow the stain)"
            )
        lines.append(line + ".")
    summary = seen.get("training_summary") or {}
    if (summary.get("base_weights") or {}).get("used") == "None":
        lines.append(
            "  The VGG16 base had random weights, not ImageNet's: these numbers show the pipeline working, "
            "not what the method achieves. Pass model.base_weights=/path/to/vgg16_..._notop.h5."
        )
    predictions = seen.get("predictions")
    if predictions is not None:
        ok = int((predictions["status"] == OK).sum())
        lines.append(
            f"  Scored {ok} of {len(predictions)} files; {len(predictions) - ok} quarantined with a reason."
        )
    lines += [f"  {name.replace('_', ' ').capitalize()}: {path}" for name, path in paths.items() if path]
    if run is not None:
        name, run_id, uri = run
        lines.append(f"  MLflow run '{name}' ({run_id}) in {uri}")
    if metrics:
        lines.append(
            "  Next: `kedro mlflow ui` (choose 'Model training', experiment all_detection) to compare runs,"
            ' or `kedro run --pipeline inference --params "inference.input_dir=/path/to/images"` to score'
            " images."
        )
    elif quality:
        lines.append("  Next: `kedro run` for the whole pipeline, training and evaluation included.")
    return lines


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
