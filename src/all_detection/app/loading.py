"""The model the page serves, loaded from the project's MLflow store with what a person needs to
judge it: the preprocessing it was trained with, the training images' colour range, and its card."""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import mlflow
import yaml

from all_detection.checks import InferenceSetupError
from all_detection.pipelines.inference.nodes import check_model_input
from all_detection.serving import CHAMPION, REGISTERED_NAME, SYNTHETIC_REGISTERED_NAME

logger = logging.getLogger(__name__)

CHAMPION_URI = f"models:/{REGISTERED_NAME}@{CHAMPION}"
#: Reports every `kedro run` logs to its MLflow run, which the page's model card reads.
RUN_REPORTS = ("metrics.json", "shortcut_audit.json", "model_card.md")


@dataclass
class PageModel:
    """A loaded model and everything the page says about it."""

    uri: str
    #: Scores single images (and gives their Grad-CAM); it only ever sees batches of one image.
    network: keras.Model
    #: Scores batches: a second copy of the same weights, so that single images scored between a
    #: batch's slices leave its compiled predict step as the inference pipeline's would be.
    batch_network: keras.Model
    preprocessing: dict[str, Any]
    ingestion: dict[str, Any]
    batch_size: int
    colour_range: dict[str, Any] | None
    card: dict[str, Any] = field(default_factory=dict)


def project_context(project: Path, env: str | None = None) -> Any:
    """The project's Kedro context in `env`, as `kedro run` makes it: its parameters, and its MLflow
    store set up by the project's hooks (kedro-mlflow's tracking URI from conf/base/mlflow.yml; the
    store's artifact locations moved with the project folder)."""
    from kedro.framework.session import KedroSession  # noqa: PLC0415
    from kedro.framework.startup import bootstrap_project  # noqa: PLC0415

    # As `kedro` commands run, in the project folder: conf/base/mlflow.yml's relative SQLite path names
    # the project's store, which then stays named by its absolute path wherever this process goes.
    with contextlib.chdir(project):
        bootstrap_project(project)
        with KedroSession.create(project_path=project, env=env) as session:
            context = session.load_context()
        uri = mlflow.get_tracking_uri()
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_absolute():
            mlflow.set_tracking_uri(f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}")
    return context


def default_model_uri(client: mlflow.MlflowClient) -> str:
    """The champion; in a store with no champion but demo models (after `kedro run --env demo`), the
    latest `all_detection_synthetic` version, which the page then labels as a synthetic-data model."""
    try:
        client.get_model_version_by_alias(REGISTERED_NAME, CHAMPION)
        return CHAMPION_URI
    except mlflow.exceptions.MlflowException:
        pass
    versions = client.search_model_versions(f"name = '{SYNTHETIC_REGISTERED_NAME}'")
    if versions:
        latest = max(int(version.version) for version in versions)
        logger.warning(
            "No %s in this store: serving the demo's model %s version %d, trained on synthetic smears",
            CHAMPION_URI, SYNTHETIC_REGISTERED_NAME, latest,
        )  # fmt: skip
        return f"models:/{SYNTHETIC_REGISTERED_NAME}/{latest}"
    raise InferenceSetupError(
        f"The MLflow store {mlflow.get_tracking_uri()} has no model to serve: no {CHAMPION_URI} and no "
        f"{SYNTHETIC_REGISTERED_NAME}. Train one first (`kedro run`, or `kedro run --env demo` for the "
        "synthetic demo), or name a model with --model-uri."
    )


def load_page_model(project: Path, env: str | None = None, model_uri: str | None = None) -> PageModel:
    """The model at `model_uri` (default: `default_model_uri`) from the project's store, ready to score.

    The images are prepared with the preprocessing the model's run logged (image size, input mode,
    segmentation), over the project's; the decode limits and the batch size are the project's
    (`ingestion`, `inference.batch_size`), as `kedro run --pipeline inference` uses them.
    """
    context = project_context(project, env)
    client = mlflow.MlflowClient()
    uri = model_uri or default_model_uri(client)
    try:
        info = mlflow.models.get_model_info(uri)
        served = mlflow.pyfunc.load_model(uri).unwrap_python_model()
        batch_network = mlflow.pyfunc.load_model(uri).unwrap_python_model().model
    except (mlflow.exceptions.MlflowException, OSError) as error:
        raise InferenceSetupError(
            f"Cannot load the model {uri} from {mlflow.get_tracking_uri()}: {error}"
        ) from None
    parameters = context.params
    run = client.get_run(info.run_id) if info.run_id else None
    preprocessing = with_run_preprocessing(parameters["preprocessing"], run.data.params if run else {})
    check_model_input(served.model, preprocessing)
    return PageModel(
        uri=uri,
        network=served.model,
        batch_network=batch_network,
        preprocessing=preprocessing,
        ingestion=parameters["ingestion"],
        batch_size=int(parameters["inference"]["batch_size"]),
        colour_range=getattr(served, "colour_range", None),
        card=model_card(client, uri, run),
    )


def with_run_preprocessing(preprocessing: dict[str, Any], run_params: dict[str, str]) -> dict[str, Any]:
    """`preprocessing` with every value the model's run logged (`preprocessing.image_size=224`...)
    in its place: the model is fed images prepared as it was trained on, whatever conf says now."""
    merged = json.loads(json.dumps(preprocessing))
    for name, text in run_params.items():
        if not name.startswith("preprocessing."):
            continue
        *path, leaf = name.split(".")[1:]
        section = merged
        for key in path:
            section = section.setdefault(key, {})
        section[leaf] = yaml.safe_load(text)
    return merged


def model_card(client: mlflow.MlflowClient, uri: str, run: Any) -> dict[str, Any]:
    """What the page's model card shows: the model and its run, the data, the test accuracy with its
    interval, the shortcut audit's headline numbers and the run's full model card, where logged."""
    card: dict[str, Any] = {"model_uri": uri}
    if uri.startswith("models:/") and "/m-" not in uri:
        name = uri.removeprefix("models:/").split("/")[0].split("@")[0]
        version = _registered_version(client, uri, name)
        if version is not None:
            card |= {"registered_name": name, "version": str(version.version),
                     "description": version.description or ""}  # fmt: skip
    if run is None:
        return card
    params = run.data.params
    card |= {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "dataset_root": params.get("dataset.root"),
        "synthetic": params.get("dataset.synthetic", "False").lower() == "true",
        "manifest_sha256": params.get("data.manifest_sha256"),
        "image_size": params.get("preprocessing.image_size"),
        "input_mode": params.get("preprocessing.input_mode"),
        "tta": params.get("evaluation.tta"),
    }
    reports = _run_reports(client, run.info.run_id)
    test = (reports.get("metrics.json") or {}).get("test") or {}
    if test:
        card["test"] = {
            "accuracy": test.get("accuracy"),
            "interval": (test.get("confidence_intervals") or {}).get("accuracy"),
            "n": test.get("n"),
            "macro_f1": test.get("macro_f1"),
            "recall": {label: block.get("recall") for label, block in (test.get("per_class") or {}).items()},
        }
    audit = reports.get("shortcut_audit.json")
    if audit:
        card["shortcut_audit"] = audit_summary(audit)
    card["model_card_md"] = reports.get("model_card.md")
    return card


def _registered_version(client: mlflow.MlflowClient, uri: str, name: str) -> Any:
    reference = uri.removeprefix("models:/").removeprefix(name)
    try:
        if reference.startswith("@"):
            return client.get_model_version_by_alias(name, reference[1:])
        if reference.startswith("/") and reference[1:].isdigit():
            return client.get_model_version(name, reference[1:])
    except mlflow.exceptions.MlflowException:
        return None
    return None


def _run_reports(client: mlflow.MlflowClient, run_id: str) -> dict[str, Any]:
    """The run's reports/ artifacts the card reads, parsed; those it lacks are left out."""
    found: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in RUN_REPORTS:
            try:
                path = Path(client.download_artifacts(run_id, f"reports/{name}", folder))
            except (mlflow.exceptions.MlflowException, OSError):
                continue
            text = path.read_text()
            found[name] = json.loads(text) if name.endswith(".json") else text
    return found


def audit_summary(audit: dict[str, Any]) -> dict[str, Any]:
    """The shortcut audit's headline numbers: how far colour alone gets (the colour null model), what a
    stain swap costs the model and how often it follows the donor's class, and where Grad-CAM looks."""
    nulls, counterfactuals = audit.get("null_models") or {}, audit.get("counterfactuals") or {}
    colour, swap = nulls.get("colour_statistics") or {}, counterfactuals.get("stain_swap") or {}
    attention = (audit.get("attention") or {}).get("all") or {}
    shares, areas = attention.get("share") or {}, attention.get("area") or {}
    return {
        "colour_null_accuracy": colour.get("accuracy"),
        "colour_null_interval": colour.get("interval"),
        "stain_swap_accuracy": swap.get("accuracy"),
        "stain_swap_drop": swap.get("drop"),
        "stain_swap_follows_donor": swap.get("follows_donor"),
        "unchanged_accuracy": (counterfactuals.get("unchanged") or {}).get("accuracy"),
        "gradcam_blast_mask_share": shares.get("blast_mask"),
        "blast_mask_area": areas.get("blast_mask"),
    }
