"""Inference: every file under a folder of new smear images, checked like ingestion's, then classified.

Files are judged by ingestion's own per-file verdict (links never followed, fifos never read, hidden
and system files, size and decoding limits) and each usable image is turned into what the network sees
by preprocessing's `model_input`, so a file is read and prepared exactly as the training images were.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np
import pandas as pd

from all_detection.checks import InferenceSetupError, check_input_shape
from all_detection.core.prediction import predict_probabilities
from all_detection.core.progress import Progress
from all_detection.image_io import FILE_VERDICT_COLUMNS, UNREADABLE, ImageFolder, UnusableImage
from all_detection.layout import (
    CLASSES,
    OK,
    PREDICTION_COLUMNS,
    PROBABILITY_COLUMNS,
    QUARANTINED,
)
from all_detection.segmentation import model_input

logger = logging.getLogger(__name__)


def scan_inference_folder(inference_images: ImageFolder, ingestion: dict[str, Any]) -> pd.DataFrame:
    """Every file in the folder to score, recursively, in any layout: one row each, with its verdict.

    The same walk and per-file verdict as ingestion, with its limits (`min_side_px`, `max_pixels`,
    `max_file_mb`): links are recorded and never followed, hidden and system files quarantined, every
    other file decoded in full. There are no class folders here, so no file is misplaced. Columns are
    ingestion's `FILE_VERDICT_COLUMNS`, rows sorted by path.
    """
    root = inference_images.root
    if not root.is_dir():
        raise InferenceSetupError(
            f"Inference input folder '{root}' does not exist or is not a folder. Point to the images "
            'to score with --params "inference.input_dir=/path/to/images" (searched recursively, '
            "any layout)."
        )
    entries = inference_images.files()
    logger.info("Checking %d files under %s", len(entries), root)
    if not entries:
        logger.warning("No files under %s: the predictions table will be empty", root)
    progress = Progress(logger, "checked files", len(entries))
    records = []
    for relative in entries:
        records.append(inference_images.inspect(relative, ingestion))
        progress.advance()
    return pd.DataFrame.from_records(records, columns=FILE_VERDICT_COLUMNS)


def check_model_input(classifier: keras.Model, preprocessing: dict[str, Any]) -> None:
    """Raise `InferenceSetupError` unless the model takes the images preprocessing makes
    (`check_input_shape`) and scores CLASSES."""
    check_input_shape(tuple(classifier.input_shape[1:]), preprocessing)
    if classifier.output_shape[-1] != len(CLASSES):
        raise InferenceSetupError(
            f"The model gives {classifier.output_shape[-1]} outputs, not one per class {CLASSES}."
        )


def score_images(
    files: pd.DataFrame,
    inference_images: ImageFolder,
    classifier: keras.Model,
    inference: dict[str, Any],
    preprocessing: dict[str, Any],
    ingestion: dict[str, Any],
) -> pd.DataFrame:
    """The predictions table: one row per file scanned, with the predicted stage and each class's probability.

    Usable files are read again from the folder `inference["batch_size"]` at a time, so memory stays
    bounded for any number of files, decoded through the same gate with ingestion's limits and
    prepared by `model_input`. Columns: `path`, `status`, `reason`, `predicted` and `prob_<class>` per
    class (null for quarantined files). A file that changed or vanished since the scan, or was swapped
    for a link (never followed), is quarantined, not fatal.
    """
    check_model_input(classifier, preprocessing)
    predictions = files[["path", "status", "reason"]].reset_index(drop=True).astype("string")
    probabilities = np.full((len(predictions), len(CLASSES)), np.nan)
    usable = np.flatnonzero(predictions["status"] == OK)
    progress = Progress(logger, "scored images", len(usable))
    batch_size = inference["batch_size"]
    for start in range(0, len(usable), batch_size):
        rows, stack = [], []
        for row in usable[start : start + batch_size]:
            try:
                rgb = inference_images.read_rgb(predictions.at[row, "path"], ingestion)
                stack.append(model_input(rgb, preprocessing)[0])
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
