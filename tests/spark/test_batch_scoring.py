"""`kedro run --pipeline batch_scoring` on a local Spark session, against the inference pipeline: the
same rows, verdicts and probabilities for the folder of defective files the ingestion tests use."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest

from all_detection.checks import InferenceSetupError
from all_detection.core.model import assemble_classifier, build_base, build_feature_extractor, build_head
from all_detection.datasets import MlflowModelRegistrationDataset
from all_detection.image_io import ImageFolder
from all_detection.layout import CLASSES, OK, PREDICTION_COLUMNS, PROBABILITY_COLUMNS
from all_detection.pipelines.batch_scoring.nodes import (
    check_served_model,
    list_archive,
    score_archive,
    summarise_batch_scoring,
)
from all_detection.serving import CHAMPION, REGISTERED_NAME, servable_model
from all_detection.synthetic import render_smear
from tests.configuration import configured_parameters
from tests.defects import write_defective_dataset
from tests.pipelines.inference.test_nodes import NEEDS_DATASET_LAYOUT, NOT_AN_IMAGE_BUT_MISPLACED
from tests.projects import copy_project, run_session

pytestmark = [pytest.mark.spark, pytest.mark.slow]

SIZE = 32
HEAD = configured_parameters()["model"]["head"]
INGESTION = configured_parameters()["ingestion"]
PREPROCESSING = {**configured_parameters()["preprocessing"], "image_size": SIZE}


def trained_model() -> keras.Model:
    """VGG16's shape at 32 px (random base) with a head fit a few epochs on synthetic smears, so its
    answers differ from image to image and class to class as a trained model's do."""
    keras.utils.set_random_seed(0)
    base, _ = build_base(SIZE, None)
    extractor = build_feature_extractor(base, 3, "imagenet")
    model = assemble_classifier(extractor, build_head(extractor.output_shape[1:], HEAD))
    rng = np.random.default_rng(0)
    labels = np.arange(32) % len(CLASSES)
    images = np.stack([render_smear(CLASSES[label], rng, size=SIZE)[0] for label in labels])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(images.astype(np.float32), labels, epochs=4, batch_size=8, verbose=0)
    return model


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A project with a registered champion at 32 px; the defective folder scored by batch_scoring
    (with the champion by default) and by the inference pipeline (naming the champion)."""
    work = tmp_path_factory.mktemp("batch_scoring")
    project = copy_project(work / "project")
    # Spark's settings come from configuration only: one worker, whose TensorFlow uses every core
    # (the fastest on one machine, README), and one Python worker's start instead of one per core.
    (project / "conf" / "local" / "spark.yml").write_text("spark.master: local[1]\n")
    folder = work / "archive"
    verdicts = write_defective_dataset(folder)
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("registry", (work / "artifacts").as_uri()))
    record = MlflowModelRegistrationDataset(str(work / "registration.json"), REGISTERED_NAME)
    model = trained_model()
    with mlflow.start_run():
        record.save(servable_model(model, np.zeros((2, SIZE, SIZE, 3), np.float32)))
    mlflow.MlflowClient().set_registered_model_alias(REGISTERED_NAME, CHAMPION, "1")
    mlflow.set_tracking_uri(None)
    to_score = {"input_dir": str(folder)}
    size = {"image_size": SIZE}
    run_session(project, pipeline="batch_scoring", inference=to_score, preprocessing=size)
    champion = f"models:/{REGISTERED_NAME}@{CHAMPION}"
    run_session(
        project, pipeline="inference", inference={**to_score, "model_uri": champion}, preprocessing=size
    )
    expected = {
        path: NOT_AN_IMAGE_BUT_MISPLACED.get(path) if reason in NEEDS_DATASET_LAYOUT else reason
        for path, reason in verdicts.items()
    }
    return {"project": project, "folder": folder, "expected": expected}


def read_table(project: Path) -> pd.DataFrame:
    """The Parquet table batch scoring wrote, in predictions.csv's column order and types, by path."""
    table = pd.read_parquet(project / "data/07_model_output/batch_predictions.parquet")
    table["status"] = table["status"].astype(str)
    return table[PREDICTION_COLUMNS].sort_values("path", ignore_index=True)


def test_batch_scoring_gives_the_inference_pipeline_s_predictions_row_for_row(scored):
    table = read_table(scored["project"])
    predictions = pd.read_csv(scored["project"] / "data/07_model_output/predictions.csv")
    predictions = predictions.sort_values("path", ignore_index=True)
    assert table["path"].tolist() == predictions["path"].tolist()
    for column in ("status", "reason", "predicted"):
        assert table[column].fillna("").tolist() == predictions[column].fillna("").tolist(), column
    np.testing.assert_allclose(table[PROBABILITY_COLUMNS], predictions[PROBABILITY_COLUMNS], atol=1e-6)
    usable = table[table["status"] == OK]
    assert len(usable) > 20 and usable["predicted"].nunique() > 1  # a real comparison, not all one class
    assert (table["status"] == OK).equals(table[PROBABILITY_COLUMNS].notna().all(axis=1))


def test_every_file_gets_one_row_and_each_hostile_file_its_quarantine_reason(scored):
    table = read_table(scored["project"]).set_index("path")
    expected = scored["expected"]
    assert len(table) == len(ImageFolder(scored["folder"]).files()) == len(expected)
    assert {
        path: (None if pd.isna(reason) else reason) for path, reason in table["reason"].items()
    } == expected
    # The partitions on disk: one folder per status.
    partitions = sorted(
        p.name
        for p in (scored["project"] / "data/07_model_output/batch_predictions.parquet").iterdir()
        if p.is_dir()
    )
    assert partitions == ["status=ok", "status=quarantined"]


def test_the_spark_session_is_the_one_the_project_s_configuration_asks_for(scored):
    from pyspark.sql import SparkSession  # noqa: PLC0415

    assert SparkSession.getActiveSession().conf.get("spark.master") == "local[1]"


def test_the_run_s_summary_counts_what_the_table_holds(scored):
    summary = json.loads((scored["project"] / "data/08_reporting/batch_scoring_summary.json").read_text())
    table = read_table(scored["project"])
    assert summary["files"] == len(table)
    assert summary["classified"] == int((table["status"] == OK).sum())
    assert summary["predicted"] == {label: int((table["predicted"] == label).sum()) for label in CLASSES}
    assert sum(summary["quarantined"].values()) == summary["files"] - summary["classified"]


def test_the_listing_judges_files_without_reading_them(scored):
    listing = list_archive(ImageFolder(scored["folder"]), INGESTION).set_index("path")
    expected = scored["expected"]
    assert sorted(listing.index) == sorted(expected)
    # Links, fifos, hidden and oversized files are settled by the listing; the rest wait for their bytes.
    settled = listing[listing["status"].notna()]
    assert {path: expected[path] for path in settled.index} == settled["reason"].to_dict()
    assert not listing.loc[settled.index, "readable"].any()


def test_a_model_that_is_missing_or_of_another_size_stops_before_any_file_is_read(scored, tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{scored['project']}/mlflow.db")
    try:
        with pytest.raises(InferenceSetupError, match="Could not find the model 'models:/all_detection/9'"):
            check_served_model("models:/all_detection/9", PREPROCESSING)
        with pytest.raises(InferenceSetupError, match=r"takes images of shape \(32, 32, 3\).*image_size 224"):
            check_served_model("models:/all_detection/1", {**PREPROCESSING, "image_size": 224})
    finally:
        mlflow.set_tracking_uri(None)


def test_a_file_gone_between_the_listing_and_spark_s_read_fails_the_run_naming_it(scored, tmp_path):
    """Spark reads the bytes after the project lists the files; a file deleted in between has no row,
    and the run's summary refuses the table, naming the file, rather than report fewer files."""
    from kedro_datasets.spark import SparkDatasetV2  # noqa: PLC0415

    folder = tmp_path / "changing"
    folder.mkdir()
    for name in ("Benign/a.jpg", "Pro/b.jpg"):
        source = next((scored["folder"] / "Original" / Path(name).parent.name).glob("*.jpg"))
        (folder / name).parent.mkdir()
        (folder / name).write_bytes(source.read_bytes())
    listing = list_archive(ImageFolder(folder), INGESTION)
    (folder / "Pro/b.jpg").unlink()
    archive = SparkDatasetV2(
        filepath=str(folder), file_format="binaryFile",
        load_args={"recursiveFileLookup": True, "ignoreMissingFiles": True},
    ).load()  # fmt: skip
    mlflow.set_tracking_uri(f"sqlite:///{scored['project']}/mlflow.db")
    try:
        inference = {"model_uri": f"models:/{REGISTERED_NAME}/1"}
        table = score_archive(listing, archive, ImageFolder(folder), inference, PREPROCESSING, INGESTION)
        assert table.count() == 1
        with pytest.raises(RuntimeError, match=r"2 listed files; no row for 1: Pro/b\.jpg"):
            summarise_batch_scoring(table, listing)
    finally:
        mlflow.set_tracking_uri(None)
