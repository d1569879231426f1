"""Batch scoring on Spark: every file under `inference.input_dir`, one row each, scored by the MLflow model.

The rows come from the project's own listing of the folder (`list_archive`), not from Spark's
`binaryFile` source, which silently leaves files out: hidden and system files, empty files, fifos and
links to files all go missing from its listing (measured on the ingestion tests' hostile folder: 73 of
80 files), and it follows links to folders out of the folder. Spark's executors read the bytes of the
files the listing lets through (`archive_image_bytes`, the catalog's `binaryFile` entry), each is
decoded through ingestion's gate and prepared by preprocessing's `model_input` exactly as the inference
pipeline prepares it, and the registered model scores it through `mlflow.pyfunc.spark_udf`, the same
served model that REST serving answers with. A file that fails the gate gets a quarantine row with its
reason: no task fails for a file, and the table has one row per file listed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from functools import partial
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
import numpy as np
import pandas as pd

from all_detection.checks import InferenceSetupError, check_input_shape
from all_detection.image_io import ImageFolder, UnusableImage, decode_limits, decode_rgb
from all_detection.layout import (
    CLASSES,
    OK,
    PREDICTION_COLUMNS,
    PROBABILITY_COLUMNS,
    QUARANTINED,
    input_channels,
)
from all_detection.segmentation import model_input
from all_detection.serving import CHAMPION, REGISTERED_NAME

logger = logging.getLogger(__name__)

#: A `pyspark.sql.DataFrame`. pyspark comes with the `spark` extra and is imported only where a Spark
#: pipeline runs; Kedro resolves the nodes' type hints whenever the registry loads, pyspark or not.
SparkDataFrame = Any

#: The model batch scoring uses when `inference.model_uri` names none: the registered champion.
CHAMPION_URI = f"models:/{REGISTERED_NAME}@{CHAMPION}"

#: One row per listed file: its path below the folder, its size, the verdict its listing entry gives
#: it (`status` null where the bytes decide), and whether Spark may read it.
ARCHIVE_SCHEMA = "path string, size_bytes long, status string, reason string, readable boolean"
ARCHIVE_COLUMNS = [field.split()[0] for field in ARCHIVE_SCHEMA.split(", ")]
#: A listed file after the gate: its verdict and, if usable, what the network sees, flattened.
GATED_SCHEMA = "path string, status string, reason string, pixels array<float>"


def list_archive(inference_images: ImageFolder, ingestion: dict[str, Any]) -> pd.DataFrame:
    """Every entry below the folder to score, one row each, judged by what the listing alone says.

    The same walk as ingestion and inference (links recorded, never followed; empty folders named like
    images included), and each entry's `judge_placement` verdict: links, fifos, hidden and system
    files and files over `ingestion.max_file_mb` are quarantined here, without a byte read; the rest
    (`status` null, `readable`) are left to their bytes. Rows sorted by path.
    """
    root = inference_images.root
    if not root.is_dir():
        raise InferenceSetupError(
            f"Batch scoring input folder '{root}' does not exist or is not a folder. Point to the images "
            'with --params "inference.input_dir=/path/to/images": a folder every Spark executor sees at '
            "the same path (local disk with local[*], or a shared mount on a cluster)."
        )
    records = []
    for relative in inference_images.files():
        placement = inference_images.placement(relative, ingestion)
        status = QUARANTINED if placement.reason else None
        readable = placement.readable and placement.reason is None
        records.append((str(relative), placement.size_bytes, status, placement.reason, readable))
    logger.info("Listed %d files under %s", len(records), root)
    return pd.DataFrame.from_records(records, columns=ARCHIVE_COLUMNS)


def check_served_model(model_uri: str, preprocessing: dict[str, Any]) -> None:
    """Raise `InferenceSetupError` unless the MLflow model at `model_uri` exists and takes the images
    preprocessing makes (its signature's shape), before Spark reads any file."""
    try:
        signature = mlflow.models.get_model_info(model_uri).signature
    except Exception as error:  # MLflow raises its own, OSError or requests' errors by store kind
        raise InferenceSetupError(
            f"Could not find the model '{model_uri}' in MLflow at {mlflow.get_tracking_uri()} "
            f"({type(error).__name__}: {error}). Batch scoring takes an MLflow model (models:/..., "
            "runs:/..., not a .keras file): train and register one with `kedro run`, or name one with "
            '--params "inference.model_uri=models:/all_detection/<version>".'
        ) from None
    if signature is None:
        raise InferenceSetupError(
            f"The model '{model_uri}' has no signature saying what images it takes: score with a model "
            "registered by `kedro run`, which logs one."
        )
    check_input_shape(tuple(signature.inputs.inputs[0].shape[1:]), preprocessing, f"The model '{model_uri}'")


def score_archive(
    archive_files: pd.DataFrame,
    archive_image_bytes: SparkDataFrame,
    inference_images: ImageFolder,
    inference: dict[str, Any],
    preprocessing: dict[str, Any],
    ingestion: dict[str, Any],
) -> SparkDataFrame:
    """The predictions table as a Spark DataFrame: one row per listed file, the inference pipeline's
    columns (`path`, `status`, `reason`, `predicted`, one probability per class, null where quarantined).

    Spark reads only the files the listing let through and that are within `ingestion.max_file_mb`
    (a filter Spark applies before reading a byte); each is decoded and prepared by `prepare_images`
    on the executors, and the usable ones scored by the model `inference.model_uri` (the registered
    champion if none) through `mlflow.pyfunc.spark_udf`, in the executors' own Python (`env_manager`
    `local`: no environment is built, none downloaded).
    """
    from pyspark.sql import functions  # noqa: PLC0415

    model_uri = inference.get("model_uri") or CHAMPION_URI
    check_served_model(model_uri, preprocessing)
    spark = archive_image_bytes.sparkSession
    root = str(inference_images.root.resolve())
    in_folder = functions.pandas_udf(lambda paths: _relative_paths(paths, root), "string")
    # Files to read: the listing's readable ones with bytes to read (Spark never hands over an empty
    # file). The listing is small and goes to every executor, so the bytes are joined where they are
    # read, never shuffled; the rows left out are settled without their bytes.
    to_read = archive_files["readable"] & (archive_files["size_bytes"] > 0)
    listed = spark.createDataFrame(archive_files.loc[to_read, ARCHIVE_COLUMNS], ARCHIVE_SCHEMA)
    unread = spark.createDataFrame(archive_files.loc[~to_read, ARCHIVE_COLUMNS], ARCHIVE_SCHEMA)
    within_limit = functions.col("length") <= ingestion["max_file_mb"] * 2**20
    file_bytes = archive_image_bytes.where(within_limit).select(in_folder("path").alias("path"), "content")
    files = file_bytes.join(functions.broadcast(listed), on="path").unionByName(
        unread.withColumn("content", functions.lit(None).cast("binary"))
    )
    gated = files.mapInPandas(
        partial(prepare_images, preprocessing=preprocessing, ingestion=ingestion), schema=GATED_SCHEMA
    )
    # One pass over the files, so each is read and judged once: a file that changed between two passes
    # could otherwise land in both branches of a split, or in neither. Quarantined rows reach the model
    # as blank images (the Arrow batch cannot skip them) and their answers are dropped here.
    classify = mlflow.pyfunc.spark_udf(spark, model_uri, env_manager="local")
    usable = functions.col("status") == OK
    scores = gated.withColumn("scores", classify("pixels"))
    answers = [
        functions.when(usable, functions.col(f"scores.{c}")).cast("double") for c in PROBABILITY_COLUMNS
    ]
    predictions = scores.select(
        "path", "status", "reason", *map(functions.Column.alias, answers, PROBABILITY_COLUMNS)
    )
    probabilities = functions.array(*PROBABILITY_COLUMNS)
    best = functions.array_position(probabilities, functions.array_max(probabilities)).cast("int")
    labels = functions.array(*(functions.lit(label) for label in CLASSES))
    predicted = functions.when(usable, functions.element_at(labels, best))
    return predictions.withColumn("predicted", predicted).select(*PREDICTION_COLUMNS)


def _relative_paths(paths: pd.Series, root: str) -> pd.Series:
    """Spark's file URIs (`file:/abs/path/a%20b.jpg`) as paths below `root`, as the listing writes them."""
    return paths.map(lambda uri: PurePosixPath(os.path.relpath(unquote(urlparse(uri).path), root)).as_posix())


def prepare_images(
    batches: Iterator[pd.DataFrame], preprocessing: dict[str, Any], ingestion: dict[str, Any]
) -> Iterator[pd.DataFrame]:
    """Each listed file's verdict and, for a usable image, what the network sees (flattened, float):
    through the same gate (`decode_rgb` with ingestion's limits) and the same `model_input` as the
    inference pipeline. An empty file, which Spark never hands over, decodes as the empty file it is. A
    quarantined file's pixels are a blank image of the model's shape, whose answer `score_archive` drops."""
    size = preprocessing["image_size"]
    blank = np.zeros(size * size * input_channels(preprocessing["input_mode"]), np.float32)
    for batch in batches:
        statuses, reasons, pixels = [], [], []
        for status, reason, readable, content in zip(
            batch["status"], batch["reason"], batch["readable"], batch["content"], strict=True
        ):
            if not readable:
                statuses.append(status)
                reasons.append(reason)
                pixels.append(blank)
                continue
            try:
                rgb = decode_rgb(b"" if content is None else bytes(content), **decode_limits(ingestion)).rgb
            except UnusableImage as unusable:
                statuses.append(QUARANTINED)
                reasons.append(unusable.reason)
                pixels.append(blank)
            else:
                statuses.append(OK)
                reasons.append(None)
                pixels.append(model_input(rgb, preprocessing)[0].astype(np.float32).ravel())
        yield pd.DataFrame({"path": batch["path"], "status": statuses, "reason": reasons, "pixels": pixels})


def summarise_batch_scoring(batch_predictions: SparkDataFrame, archive_files: pd.DataFrame) -> dict[str, Any]:
    """What the written table holds, read back: files, classified per class, quarantined per reason;
    and the check that it has exactly one row per listed file (else an error naming the files without one)."""
    counts = batch_predictions.groupBy("status", "reason", "predicted").count().toPandas()
    rows = int(counts["count"].sum())
    if rows != len(archive_files):
        written = {row.path for row in batch_predictions.select("path").toLocalIterator()}
        lost = sorted(set(archive_files["path"]) - written)
        raise RuntimeError(
            f"Batch scoring wrote {rows} rows for {len(archive_files)} listed files; no row for "
            f"{len(lost)}: {', '.join(lost[:10])}{' ...' if len(lost) > 10 else ''}. A file that vanished or "
            "changed between the listing and Spark's read has no row: score the folder again once it "
            "stops changing."
        )
    ok = counts[counts["status"] == OK]
    summary = {
        "files": rows,
        "classified": int(ok["count"].sum()),
        "predicted": {label: int(ok.loc[ok["predicted"] == label, "count"].sum()) for label in CLASSES},
        "quarantined": {
            str(reason): int(count)
            for reason, count in counts[counts["status"] != OK].groupby("reason")["count"].sum().items()
        },
    }
    logger.info(
        "Batch scoring: %d files, %d classified (%s), %d quarantined", rows, summary["classified"],
        ", ".join(f"{label} {count}" for label, count in summary["predicted"].items()),
        rows - summary["classified"],
    )  # fmt: skip
    return summary
