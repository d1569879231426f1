"""The trained model behind MLflow's pyfunc interface, its registration (which the catalog's
`model_registration`, an `MlflowModelRegistrationDataset`, does when it is saved), and the record of
each registered version: what it was trained on, how it scored, and whether it is the champion.

Models trained on real data are versions of `all_detection`; models trained on the demo's synthetic set
are versions of `all_detection_synthetic`, and are never champion. The alias `champion` moves only
between versions whose runs saw the same manifest (the same files, labels and split, so the same test
images): test accuracies on different test sets are not compared.

`mlflow models serve -m models:/all_detection/<version> --env-manager local` then answers a batch of
images at the trained size with the four class probabilities.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import keras
import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

import all_detection
from all_detection.core.prediction import predict_probabilities
from all_detection.layout import PROBABILITY_COLUMNS

logger = logging.getLogger(__name__)

REGISTERED_NAME = "all_detection"
#: Where models trained on synthetic data (`dataset.synthetic`, the demo) are registered instead.
SYNTHETIC_REGISTERED_NAME = "all_detection_synthetic"
SERVED_MODEL_CODE = Path(__file__).with_name("served_model.py")
# Images per forward pass in a served request: a model with dihedral test-time augmentation runs each
# as 8 views, and 8 images at 224 px keep VGG16's activations near 1.4 GB (evaluation.predict_batch_size).
PREDICT_BATCH_SIZE = 8
#: What the served model imports (`served_model.py`, then `all_detection.serving` and `core`), beside the
#: Keras backend it was saved under. MLflow's own guess loads the model in a subprocess (about 20 s of
#: every registration) and listed jax, matplotlib and scikit-learn but neither keras nor tensorflow.
SERVING_PACKAGES = ("mlflow", "keras", "numpy", "pandas")
#: The distributions that can provide each backend, in the order they are looked for.
BACKEND_PACKAGES = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "jax": ("jax", "jaxlib")}


class StageClassifier(mlflow.pyfunc.PythonModel):
    """A batch of images (n, size, size, channels), 0-255, in; one probability column per class out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        import all_detection.core.model  # noqa: F401, PLC0415 - registers the custom layers before loading

        self.model = keras.models.load_model(context.artifacts["keras_model"], safe_mode=True)
        # The training images' colour range (`shortcuts.fit_colour_range`), where the model carries one.
        colour_range = context.artifacts.get("colour_range")
        self.colour_range = json.loads(Path(colour_range).read_text()) if colour_range else None

    # `np.ndarray` alone, a type MLflow does not infer a schema from: the logged signature validates
    # the input, and a union with dict made MLflow warn on every import of this module.
    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: np.ndarray,
        params: dict | None = None,
    ) -> pd.DataFrame:
        if isinstance(model_input, dict):  # a named tensor, as the REST endpoint's "inputs" may send it
            (model_input,) = model_input.values()
        probabilities = predict_probabilities(self.model, np.asarray(model_input), PREDICT_BATCH_SIZE)
        return pd.DataFrame(probabilities, columns=PROBABILITY_COLUMNS)


def serving_requirements(backend: str | None = None) -> list[str]:
    """The served model's pip requirements, pinned to the versions installed here: `SERVING_PACKAGES`
    and what provides the Keras backend (`BACKEND_PACKAGES`: JAX needs both of its distributions,
    TensorFlow one of its two, unpinned where neither is installed). The project's own code travels
    with the model (`code_paths`), so it is not a requirement."""
    backend = backend or keras.backend.backend()
    providers = BACKEND_PACKAGES.get(backend, (backend,))
    installed = [pinned for pinned in map(_pinned, providers) if pinned]
    engine = installed if backend == "jax" else installed[:1] or [providers[0]]
    return [*map(_pinned, SERVING_PACKAGES), *engine]


def _pinned(distribution: str) -> str | None:
    """`name==version` of an installed distribution, None where it is not installed."""
    try:
        return f"{distribution}=={importlib.metadata.version(distribution)}"
    except importlib.metadata.PackageNotFoundError:
        return None


def model_signature(image_size: int, channels: int) -> ModelSignature:
    """Images of the trained size in, the four probabilities out."""
    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, image_size, image_size, channels))])
    outputs = Schema([ColSpec("float", column) for column in PROBABILITY_COLUMNS])
    return ModelSignature(inputs=inputs, outputs=outputs)


class ServableModel(NamedTuple):
    """What registration needs: the trained model, images of the kind it takes (the first two are
    logged as its input example), the registered model it becomes a version of, and the training
    images' colour range, logged beside the weights."""

    model: keras.Model
    example_images: np.ndarray
    registered_name: str = REGISTERED_NAME
    colour_range: dict[str, Any] | None = None


def registered_name(synthetic: bool) -> str:
    """`all_detection` for a model trained on real data, `all_detection_synthetic` for the demo's."""
    return SYNTHETIC_REGISTERED_NAME if synthetic else REGISTERED_NAME


def servable_model(
    model: keras.Model,
    test_images: np.ndarray,
    synthetic: bool = False,
    colour_range: dict[str, Any] | None = None,
) -> ServableModel:
    """The trained model with test images for its input example and the training images' colour range,
    for the catalog to register under the name its data gives it (`registered_name`)."""
    return ServableModel(model, test_images, registered_name(bool(synthetic)), colour_range)


def register_model(
    model: keras.Model,
    test_images: np.ndarray,
    registered_name: str = REGISTERED_NAME,
    colour_range: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Log the model to the active MLflow run as a pyfunc with signature and input example, and register it.

    Each call adds a version of the registered model `registered_name` (`all_detection`). The model is
    logged from code (`served_model.py`, MLflow's models-from-code): loading it runs that file, and no
    pickled Python object is stored or unpickled. The project's package travels with the model
    (`code_paths`), so it loads wherever MLflow runs, with the pinned `serving_requirements`. The
    signature follows the trained image size.
    Without an active run (tracking disabled) nothing is logged.
    """
    run = mlflow.active_run()
    if run is None:
        logger.warning("No active MLflow run: the model is saved to data/06_models but not registered")
        return {"registered": False}
    image_size, channels = model.input_shape[1], model.input_shape[-1]
    with tempfile.TemporaryDirectory() as folder:
        keras_file = Path(folder) / "model.keras"
        model.save(keras_file)
        artifacts = {"keras_model": str(keras_file)}
        if colour_range is not None:
            artifacts["colour_range"] = str(Path(folder) / "colour_range.json")
            Path(artifacts["colour_range"]).write_text(json.dumps(colour_range))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(SERVED_MODEL_CODE),
            artifacts=artifacts,
            code_paths=[str(Path(all_detection.__file__).parent)],
            pip_requirements=serving_requirements(),
            signature=model_signature(image_size, channels),
            input_example=np.asarray(test_images[:2], dtype=np.float32),
            registered_model_name=registered_name,
        )
    version = info.registered_model_version
    logger.info("Registered %s version %s (%s)", registered_name, version, info.model_uri)
    return {
        "registered": True,
        "name": registered_name,
        "version": int(version) if version is not None else None,
        "model_uri": f"models:/{registered_name}/{version}",
        "run_id": run.info.run_id,
        "logged_model_uri": info.model_uri,
        "model_id": info.model_id,
        "image_size": image_size,
        "channels": channels,
    }


CHAMPION = "champion"


class Champion(NamedTuple):
    """The version the alias names now: its number, test accuracy and the data its run saw."""

    version: str
    test_accuracy: float
    manifest_sha256: str | None
    synthetic: bool


def champion_decision(
    champion: Champion | None, accuracy: float, manifest_sha256: str, synthetic: bool
) -> tuple[bool, str]:
    """Whether a new version, of `accuracy` on the test split of the manifest `manifest_sha256`, takes
    the alias from `champion`, and the sentence that says why, for its description and the log."""
    if synthetic:
        return False, "Trained on synthetic data (the demo): never champion."
    if champion is None:
        return True, "No champion yet: champion."
    held = f"version {champion.version}"
    if champion.synthetic:
        return True, f"Champion in place of {held}, which was trained on synthetic data."
    if champion.manifest_sha256 != manifest_sha256:
        return False, (
            f"Not compared with the champion, {held}: it was trained and tested on other data (manifest "
            f"{str(champion.manifest_sha256)[:12]}, this one {manifest_sha256[:12]}), so their test "
            "accuracies are not comparable. To make this version champion, set the alias by hand (MLflow "
            "UI: the version's page, Aliases)."
        )
    if accuracy > champion.test_accuracy:
        return True, (
            f"Champion: test accuracy {accuracy:.4f} beats {held}'s {champion.test_accuracy:.4f} on the "
            "same test images."
        )
    return False, (
        f"Not champion: test accuracy {accuracy:.4f} does not beat the champion, {held} "
        f"({champion.test_accuracy:.4f} on the same test images)."
    )


def current_champion(client: mlflow.MlflowClient, name: str) -> Champion | None:
    """The version `name@champion` names, with the data its run saw (its parameters `data.*` and
    `dataset.synthetic`, which every run logs), or None."""
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:  # no champion yet
        return None
    params = client.get_run(version.run_id).data.params if version.run_id else {}
    return Champion(
        version=str(version.version),
        test_accuracy=float(version.tags.get("test_accuracy", "-inf")),
        manifest_sha256=params.get("data.manifest_sha256"),
        synthetic=params.get("dataset.synthetic", "False").lower() == "true",
    )


def _accuracy_interval(test: dict[str, Any]) -> tuple[float | None, float | None]:
    """The test accuracy's bootstrap interval, (None, None) where metrics.json has none."""
    return (test.get("confidence_intervals") or {}).get("accuracy") or (None, None)


def version_tags(metrics: dict[str, Any], manifest_sha256: str, dataset: dict[str, Any]) -> dict[str, str]:
    """One tag per fact a person filters versions by: the data, the model's input and recipe, and its test
    accuracy with the interval."""
    run, test = metrics["run"], metrics["test"]
    recipe = run.get("recipe", {})
    low, high = _accuracy_interval(test)
    tags = {
        "data.root": str(dataset["root"]),
        "data.synthetic": str(bool(dataset.get("synthetic"))).lower(),
        "data.manifest_sha256": manifest_sha256,
        "image_size": str(run["image_size"]),
        "input_mode": str(run["input_mode"]),
        "training_mode": str(run["mode"]),
        "stain_normalisation": str(recipe.get("stain_normalisation", "none")),
        "tta": str(recipe.get("tta", "none")),
        "test_images": str(test.get("n", 0)),
        "test_accuracy": f"{float(test['accuracy']):.6f}",
    }
    if low is not None and high is not None:
        tags |= {"test_accuracy_ci_low": f"{low:.6f}", "test_accuracy_ci_high": f"{high:.6f}"}
    return tags


def version_description(
    metrics: dict[str, Any], manifest_sha256: str, dataset: dict[str, Any], decision: str
) -> str:
    """The version's description on its registry page: data, input, recipe, test accuracy with its
    interval, and the champion decision."""
    run, test = metrics["run"], metrics["test"]
    recipe, sizes = run.get("recipe", {}), run["split_sizes"]
    low, high = _accuracy_interval(test)
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    synthetic = dataset.get("synthetic")
    kind = "**synthetic** smears (the demo's generator, not real data)" if synthetic else "real smears"
    tuned = recipe.get("fine_tuned_layers") or []
    base = f"fine-tuned {', '.join(tuned)}" if tuned else "frozen"
    return (
        f"Trained on {kind} from `{dataset['root']}` (manifest {manifest_sha256[:12]}): {sizes['train']} "
        f"training images ({sizes['train_views']} views), {sizes['val']} validation, {sizes['test']} test."
        f"\n\n{run['input_mode']} images at {run['image_size']} px; {run['mode']} training, VGG16 cut at "
        f"{recipe.get('cache_at', 'n/a')}, {base}; stain normalisation "
        f"{recipe.get('stain_normalisation', 'none')}, class weights {recipe.get('class_weight', 'none')}, "
        f"test-time augmentation {recipe.get('tta', 'none')}.\n\nTest accuracy "
        f"{float(test['accuracy']):.3f}{interval} on {test.get('n', 0)} test images.\n\n{decision}"
    )


def record_model_version(
    model_registration: dict[str, Any],
    metrics: dict[str, Any],
    manifest: pd.DataFrame,
    dataset: dict[str, Any],
) -> dict[str, Any]:
    """Describe and tag this run's registered version (`version_description`, `version_tags`), link the
    run's test metrics to its logged model (the model's page lists them, on the run's dataset), and
    move the alias `champion` to it when `champion_decision` says so."""
    if not model_registration.get("registered"):
        return {"registered": False, "champion": False}
    from all_detection.provenance import MLFLOW_DIGEST_LENGTH, dataset_name, manifest_sha256  # noqa: PLC0415

    client = mlflow.MlflowClient()
    name, version = model_registration["name"], str(model_registration["version"])
    digest = manifest_sha256(manifest)
    synthetic = bool(dataset.get("synthetic"))
    accuracy = float(metrics["test"]["accuracy"])
    if model_registration.get("model_id"):
        link_test_metrics(
            client,
            model_registration["run_id"],
            model_registration["model_id"],
            dataset_name(dataset["root"]),
            digest[:MLFLOW_DIGEST_LENGTH],
        )
    champion = None if synthetic else current_champion(client, name)
    crowned, decision = champion_decision(champion, accuracy, digest, synthetic)
    for key, value in version_tags(metrics, digest, dataset).items():
        client.set_model_version_tag(name, version, key, value)
    description = version_description(metrics, digest, dataset, decision)
    client.update_model_version(name, version, description=description)
    if crowned:
        client.set_registered_model_alias(name, CHAMPION, version)
    logger.info("%s version %s: %s", name, version, decision)
    holder = version if crowned else (champion.version if champion else None)
    return {
        "registered": True,
        "name": name,
        "version": int(version),
        "champion": crowned,
        "champion_version": int(holder) if holder is not None else None,
        "decision": decision,
        "model_uri": f"models:/{name}@{CHAMPION}" if holder is not None else None,
    }


def log_metrics(client: mlflow.MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    """`metrics` logged to the run `run_id`, 1000 at a time (the most MLflow's log_batch takes)."""
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def link_test_metrics(
    client: mlflow.MlflowClient, run_id: str, model_id: str, dataset: str, digest: str
) -> None:
    """Link the run's `test_*` metrics to its logged model, on the run's dataset. They are logged again
    with the same value, step and timestamp, which the run keeps once; the model gains them."""
    keys = [key for key in client.get_run(run_id).data.metrics if key.startswith("test_")]
    points = [point for key in keys for point in client.get_metric_history(run_id, key)]
    linked = [
        Metric(p.key, p.value, p.timestamp, p.step, model_id=model_id, dataset_name=dataset,
               dataset_digest=digest, run_id=run_id)
        for p in points
    ]  # fmt: skip
    log_metrics(client, run_id, linked)
