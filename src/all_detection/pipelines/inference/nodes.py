"""Inference: every file under a folder of new smear images, checked like ingestion's, then classified.

Files are judged by ingestion's own per-file verdict (links never followed, fifos never read, hidden
and system files, size and decoding limits) and each usable image is turned into what the network sees
by preprocessing's `model_input`, so a file is read and prepared exactly as the training images were.
"""

from __future__ import annotations

import logging
import stat
import tempfile
from pathlib import Path
from typing import Any

import click
import keras
import mlflow
import numpy as np
import pandas as pd

from all_detection.core.prediction import predict_probabilities
from all_detection.core.progress import Progress
from all_detection.image_io import (
    FILE_VERDICT_COLUMNS,
    NOT_REGULAR_FILE,
    SYMBOLIC_LINK,
    UNREADABLE,
    UnusableImage,
    decode_limits,
    decode_rgb,
    inspect_file,
    walk_without_following_links,
)
from all_detection.layout import CLASSES, DUAL_INPUT, OK, PROBABILITY_COLUMNS, QUARANTINED, input_channels
from all_detection.segmentation import model_input

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["path", "status", "reason", "predicted", *PROBABILITY_COLUMNS]

_HOW_TO_GET_A_MODEL = (
    "Train one first with `kedro run` (it saves data/06_models/model.keras), point to a saved model "
    'with --params "inference.model_path=/path/to/model.keras", or use one from MLflow with '
    '--params "inference.model_uri=models:/all_detection/<version>".'
)


class InferenceSetupError(click.ClickException):
    """The images to score, the model, or the two together are not usable as configured.

    A `ClickException`, so `kedro run` ends with this one message and exit code 1, not a traceback:
    the user's fix is a path or a parameter, not a line of code.
    """


def scan_inference_folder(inference: dict[str, Any], ingestion: dict[str, Any]) -> pd.DataFrame:
    """Every file under `inference["input_dir"]`, recursively, in any layout: one row each, with its verdict.

    The same walk and per-file verdict as ingestion, with its limits (`min_side_px`, `max_pixels`,
    `max_file_mb`): links are recorded and never followed, hidden and system files quarantined, every
    other file decoded in full. There are no class folders here, so no file is misplaced. Columns are
    ingestion's `FILE_VERDICT_COLUMNS`, rows sorted by path.
    """
    root = Path(inference["input_dir"])
    if not root.is_dir():
        raise InferenceSetupError(
            f"Inference input folder '{root}' does not exist or is not a folder. Point to the images "
            'to score with --params "inference.input_dir=/path/to/images" (searched recursively, '
            "any layout)."
        )
    entries = sorted(walk_without_following_links(root))
    logger.info("Checking %d files under %s", len(entries), root)
    if not entries:
        logger.warning("No files under %s: the predictions table will be empty", root)
    progress = Progress(logger, "checked files", len(entries))
    records = []
    for relative in entries:
        records.append(inspect_file(root, relative, ingestion))
        progress.advance()
    return pd.DataFrame.from_records(records, columns=FILE_VERDICT_COLUMNS)


def load_classifier(inference: dict[str, Any]) -> keras.Model:
    """The trained Keras model: from the MLflow URI `inference["model_uri"]` when set, else `model_path`.

    An MLflow URI (`models:/all_detection/3`, `runs:/<run_id>/model`, or any artifact URI) is downloaded
    to a temporary folder and the one `.keras` file inside it loaded; for the project's registered pyfunc
    models that is the file the pyfunc wraps, so both routes give the same Keras model and inference
    prepares images itself, with `model_input`. Loading is in safe mode, with the project's custom layers
    registered. A model that cannot be found or read stops the run with a message saying what to do.
    """
    if inference.get("model_uri"):
        return _load_from_mlflow(str(inference["model_uri"]))
    path = Path(inference["model_path"])
    if not path.is_file():
        raise InferenceSetupError(f"No trained model at '{path}'. {_HOW_TO_GET_A_MODEL}")
    return _load_keras_file(path, str(path))


def _load_from_mlflow(uri: str) -> keras.Model:
    with tempfile.TemporaryDirectory(prefix="all_detection_model_") as folder:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder))
        except Exception as error:  # MLflow raises its own, OSError or requests' errors by store kind
            raise InferenceSetupError(
                f"Could not fetch the model '{uri}' from MLflow at {mlflow.get_tracking_uri()} "
                f"({type(error).__name__}: {error}). {_HOW_TO_GET_A_MODEL}"
            ) from None
        if local.is_file():
            candidates = [local] if local.suffix == ".keras" else []
        else:
            # A pyfunc model also carries the project's code (code_paths); only its artifacts hold the model.
            candidates = sorted(
                path for path in local.rglob("*.keras") if path.relative_to(local).parts[0] != "code"
            )
        if len(candidates) != 1:
            found = [str(path.relative_to(local.parent)) for path in candidates]
            raise InferenceSetupError(
                f"MLflow model '{uri}' should hold exactly one .keras file; found {found or 'none'}. "
                f"{_HOW_TO_GET_A_MODEL}"
            )
        return _load_keras_file(candidates[0], uri)


def _load_keras_file(path: Path, source: str) -> keras.Model:
    import all_detection.core.model  # noqa: F401, PLC0415 - registers the custom layers before loading

    try:
        classifier = keras.models.load_model(path, safe_mode=True)
    except Exception as error:  # a wrong or damaged file fails in zipfile, h5py or Keras' deserialiser
        raise InferenceSetupError(
            f"'{source}' could not be loaded as a Keras model ({type(error).__name__}: {error}). "
            f"{_HOW_TO_GET_A_MODEL}"
        ) from None
    logger.info("Loaded model from %s: input %s", source, classifier.input_shape)
    return classifier


def check_model_input(classifier: keras.Model, preprocessing: dict[str, Any]) -> None:
    """Raise `InferenceSetupError` unless the model takes the images preprocessing makes and scores CLASSES.

    The model's input shape is fixed at training by `preprocessing.image_size` and `input_mode`;
    scoring with other values would feed it images it was never shown, or fail deep inside Keras.
    """
    size, mode = preprocessing["image_size"], preprocessing["input_mode"]
    expected = (size, size, input_channels(mode))
    takes = tuple(classifier.input_shape[1:])
    if takes != expected:
        dual = takes[-1] == input_channels(DUAL_INPUT)
        trained_modes = DUAL_INPUT if dual else "original, segmented or masked"
        raise InferenceSetupError(
            f"The model takes images of shape {takes}, but preprocessing makes {expected} (image_size "
            f"{size}, input_mode {mode!r}). Score with the preprocessing the model was trained with: "
            f'--params "preprocessing.image_size={takes[0]},preprocessing.input_mode=..." '
            f"({takes[-1]} channels: {trained_modes})."
        )
    if classifier.output_shape[-1] != len(CLASSES):
        raise InferenceSetupError(
            f"The model gives {classifier.output_shape[-1]} outputs, not one per class {CLASSES}."
        )


def score_images(
    files: pd.DataFrame,
    classifier: keras.Model,
    inference: dict[str, Any],
    preprocessing: dict[str, Any],
    ingestion: dict[str, Any],
) -> pd.DataFrame:
    """The predictions table: one row per file scanned, with the predicted stage and each class's probability.

    Usable files are read again from `inference["input_dir"]` `batch_size` at a time, so memory stays
    bounded for any number of files, decoded by `decode_rgb` with ingestion's limits and prepared by
    `model_input`. Columns: `path`, `status`, `reason`, `predicted` and `prob_<class>` per class (null for
    quarantined files). A file that changed or vanished since the scan is quarantined, not fatal.
    """
    check_model_input(classifier, preprocessing)
    root = Path(inference["input_dir"])
    predictions = files[["path", "status", "reason"]].reset_index(drop=True).astype("string")
    probabilities = np.full((len(predictions), len(CLASSES)), np.nan)
    usable = np.flatnonzero(predictions["status"] == OK)
    progress = Progress(logger, "scored images", len(usable))
    batch_size = inference["batch_size"]
    for start in range(0, len(usable), batch_size):
        rows, stack = [], []
        for row in usable[start : start + batch_size]:
            try:
                stack.append(_prepared_image(root / predictions.at[row, "path"], preprocessing, ingestion))
                rows.append(row)
            except UnusableImage as unusable:
                predictions.loc[row, ["status", "reason"]] = [QUARANTINED, unusable.reason]
            except OSError:
                predictions.loc[row, ["status", "reason"]] = [QUARANTINED, UNREADABLE]
        if stack:
            probabilities[rows] = predict_probabilities(classifier, np.stack(stack), len(stack))
        progress.advance(len(usable[start : start + batch_size]))
    scored = ~np.isnan(probabilities).any(axis=1)
    predictions["predicted"] = pd.Series(pd.NA, index=predictions.index, dtype="string")
    predictions.loc[scored, "predicted"] = np.asarray(CLASSES)[probabilities[scored].argmax(axis=1)]
    predictions[PROBABILITY_COLUMNS] = probabilities
    _log_summary(predictions)
    return predictions[PREDICTION_COLUMNS]


def keep_this_run(predictions: pd.DataFrame) -> pd.DataFrame:
    """The same table, for the catalog's versioned copy (`predictions_of_run`): every inference run's
    predictions are kept, one file per run, while `predictions.csv` holds the latest."""
    return predictions


def _prepared_image(path: Path, preprocessing: dict[str, Any], ingestion: dict[str, Any]) -> np.ndarray:
    mode = path.lstat().st_mode
    # Checked again: a file swapped for a link or a fifo since the scan is still never followed or read.
    if not stat.S_ISREG(mode):
        reason = SYMBOLIC_LINK if stat.S_ISLNK(mode) else NOT_REGULAR_FILE
        raise UnusableImage(reason, "changed since the scan")
    image = decode_rgb(path.read_bytes(), **decode_limits(ingestion))
    return model_input(image.rgb, preprocessing)[0]


def _log_summary(predictions: pd.DataFrame) -> None:
    ok = predictions[predictions["status"] == OK]
    counts = ok["predicted"].value_counts().reindex(list(CLASSES), fill_value=0)
    logger.info(
        "Scored %d files: %d classified (%s), %d quarantined",
        len(predictions), len(ok), ", ".join(f"{label} {count}" for label, count in counts.items()),
        len(predictions) - len(ok),
    )  # fmt: skip
    for reason, count in predictions["reason"].value_counts().sort_index().items():
        logger.warning("  quarantined %d x %s", count, reason)
