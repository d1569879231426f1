"""The trained model behind MLflow's pyfunc interface, and its registration as `all_detection` (which
the catalog's `model_registration`, an `MlflowModelRegistrationDataset`, does when it is saved).

`mlflow models serve -m models:/all_detection/<version> --env-manager local` then answers a batch of
images at the trained size with the four class probabilities.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import keras
import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

import all_detection
from all_detection.core.prediction import predict_probabilities
from all_detection.layout import PROBABILITY_COLUMNS

logger = logging.getLogger(__name__)

REGISTERED_NAME = "all_detection"
SERVED_MODEL_CODE = Path(__file__).with_name("served_model.py")
# Images per forward pass in a served request: a model with dihedral test-time augmentation runs each
# as 8 views, and 8 images at 224 px keep VGG16's activations near 1.4 GB (evaluation.predict_batch_size).
PREDICT_BATCH_SIZE = 8


class StageClassifier(mlflow.pyfunc.PythonModel):
    """A batch of images (n, size, size, channels), 0-255, in; one probability column per class out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        import all_detection.core.model  # noqa: F401, PLC0415 - registers the custom layers before loading

        self.model = keras.models.load_model(context.artifacts["keras_model"], safe_mode=True)

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


def model_signature(image_size: int, channels: int) -> ModelSignature:
    """Images of the trained size in, the four probabilities out."""
    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, image_size, image_size, channels))])
    outputs = Schema([ColSpec("float", column) for column in PROBABILITY_COLUMNS])
    return ModelSignature(inputs=inputs, outputs=outputs)


class ServableModel(NamedTuple):
    """What registration needs: the trained model and images of the kind it takes (the first two are
    logged as its input example)."""

    model: keras.Model
    example_images: np.ndarray


def servable_model(model: keras.Model, test_images: np.ndarray) -> ServableModel:
    """The trained model with test images for its input example, for the catalog to register."""
    return ServableModel(model, test_images)


def register_model(
    model: keras.Model, test_images: np.ndarray, registered_name: str = REGISTERED_NAME
) -> dict[str, Any]:
    """Log the model to the active MLflow run as a pyfunc with signature and input example, and register it.

    Each call adds a version of the registered model `registered_name` (`all_detection`). The model is
    logged from code (`served_model.py`, MLflow's models-from-code): loading it runs that file, and no
    pickled Python object is stored or unpickled. The project's package travels with the model
    (`code_paths`), so it loads wherever MLflow runs. The signature follows the trained image size.
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
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(SERVED_MODEL_CODE),
            artifacts={"keras_model": str(keras_file)},
            code_paths=[str(Path(all_detection.__file__).parent)],
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
        "image_size": image_size,
        "channels": channels,
    }


CHAMPION = "champion"


def crown_champion(model_registration: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """Tag this run's registered version with its test accuracy, and move the alias `champion` to it
    when it beats the current champion's (or there is none yet), so `models:/all_detection@champion`
    names the best model registered, not the first. Test accuracies of different datasets or splits
    are not comparable: the alias is for one dataset's runs, as the tracking store usually holds."""
    if not model_registration.get("registered"):
        return {"champion": False}
    client = mlflow.MlflowClient()
    name, version = model_registration["name"], str(model_registration["version"])
    accuracy = float(metrics["test"]["accuracy"])
    client.set_model_version_tag(name, version, "test_accuracy", f"{accuracy:.6f}")
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:  # no champion yet
        current = None
    to_beat = float(current.tags.get("test_accuracy", "-inf")) if current is not None else None
    crowned = to_beat is None or accuracy > to_beat
    if crowned:
        client.set_registered_model_alias(name, CHAMPION, version)
        logger.info(
            "%s version %s (test accuracy %.4f) is now models:/%s@%s", name, version, accuracy, name, CHAMPION
        )
    else:
        logger.info(
            "%s version %s (test accuracy %.4f) did not beat the champion, version %s (%.4f)",
            name, version, accuracy, current.version, to_beat,
        )  # fmt: skip
    champion = version if crowned else str(current.version)
    return {"champion": crowned, "champion_version": int(champion), "model_uri": f"models:/{name}@{CHAMPION}"}
