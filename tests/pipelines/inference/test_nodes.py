"""Inference nodes on a folder holding every defect real folders have, with a tiny real model at 32 px."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from kedro.io import DatasetError

from all_detection.core.model import (
    assemble_classifier,
    build_base,
    build_feature_extractor,
    build_head,
    with_test_time_augmentation,
)
from all_detection.datasets import KerasModelDataset
from all_detection.image_io import ImageFolder, decode_rgb
from all_detection.layout import CLASSES
from all_detection.offline import run_in_process
from all_detection.pipelines.evaluation.nodes import predict_split
from all_detection.pipelines.inference import create_pipeline
from all_detection.pipelines.inference.nodes import (
    PREDICTION_COLUMNS,
    InferenceSetupError,
    scan_inference_folder,
    score_images,
)
from all_detection.segmentation import model_input
from tests.configuration import configured_parameters
from tests.defects import write_defective_dataset
from tests.stores import new_store

INGESTION = configured_parameters()["ingestion"]
PREPROCESSING = {**configured_parameters()["preprocessing"], "image_size": 32}
HEAD = configured_parameters()["model"]["head"]
PROBABILITIES = [f"prob_{label}" for label in CLASSES]

# Ingestion's verdicts that need its class folders or the whole table to see; a folder to score has neither,
# so these files are judged by what they hold: all are images except the one text file.
NEEDS_DATASET_LAYOUT = {
    "outside a known class folder",
    "byte-identical files under different labels",
    "Segmented image without an Original",
    "its Original is quarantined",
}
NOT_AN_IMAGE_BUT_MISPLACED = {"README.txt": "not an image"}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base, _ = build_base(32, None)
    extractor = build_feature_extractor(base, 3, "imagenet")
    classifier = assemble_classifier(extractor, build_head(extractor.output_shape[1:], HEAD))
    path = tmp_path_factory.mktemp("model") / "model.keras"
    classifier.save(path)
    return path


@pytest.fixture(scope="module")
def tta_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model saved as training saves it with `evaluation.tta: dihedral`."""
    base, _ = build_base(32, None)
    extractor = build_feature_extractor(base, 3, "imagenet")
    classifier = assemble_classifier(extractor, build_head(extractor.output_shape[1:], HEAD))
    path = tmp_path_factory.mktemp("model") / "model.keras"
    with_test_time_augmentation(classifier, "dihedral").save(path)
    return path


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str | None]]:
    """The defective dataset as a folder of new images, with the verdict inference owes each file."""
    root = tmp_path_factory.mktemp("to_score") / "images"
    ingestion_verdicts = write_defective_dataset(root)
    expected = {
        path: NOT_AN_IMAGE_BUT_MISPLACED.get(path) if reason in NEEDS_DATASET_LAYOUT else reason
        for path, reason in ingestion_verdicts.items()
    }
    return root, expected


def load_model(path: Path, model_uri: str | None = None):
    """The model as the catalog's `model` entry loads it."""
    return KerasModelDataset(filepath=str(path), model_uri=model_uri).load()


def score(root: Path, model, batch_size: int = 32, preprocessing: dict = PREPROCESSING) -> pd.DataFrame:
    """Both inference nodes on the folder at `root`, as the pipeline chains them."""
    folder = ImageFolder(root)
    files = scan_inference_folder(folder, INGESTION)
    return score_images(files, folder, model, {"batch_size": batch_size}, preprocessing, INGESTION)


@pytest.fixture(scope="module")
def model(model_file):
    """The model loaded once for the tests that score with it: loading and tracing its predict step are
    most of their time at 32 px. Loading itself is tested on its own."""
    return load_model(model_file)


@pytest.fixture(scope="module")
def predictions(image_folder, model) -> pd.DataFrame:
    root, _ = image_folder
    return score(root, model)


def test_scores_do_not_depend_on_the_batch_size(image_folder, model, predictions):
    root, _ = image_folder
    in_fives = score(root, model, batch_size=5)
    pd.testing.assert_frame_equal(in_fives, predictions, rtol=1e-5)


@pytest.mark.slow
def test_inference_applies_test_time_augmentation_exactly_as_evaluation_does(
    image_folder, tta_model_file, predictions
):
    root, _ = image_folder
    model = load_model(tta_model_file)
    scored = score(root, model, batch_size=7)
    ok = scored[scored["status"] == "ok"].reset_index(drop=True)
    # Evaluation's way: the same files prepared by model_input into a stack, through predict_split.
    limits = {"min_side": INGESTION["min_side_px"], "max_pixels": INGESTION["max_pixels"]}
    stack = np.stack(
        [
            model_input(decode_rgb((root / path).read_bytes(), **limits).rgb, PREPROCESSING)[0]
            for path in ok["path"]
        ]
    )
    index = pd.DataFrame({"image_id": ok["path"], "label": CLASSES[0], "label_index": 0})
    evaluated = predict_split(model, stack, index, batch_size=16)
    np.testing.assert_allclose(
        ok[PROBABILITIES].to_numpy(dtype=float), evaluated[PROBABILITIES].to_numpy(), rtol=1e-5, atol=1e-7
    )
    assert ok["predicted"].tolist() == evaluated["predicted"].tolist()


def test_a_file_gone_since_the_scan_is_quarantined_not_fatal(tmp_path, model):
    root = tmp_path / "images"
    write_defective_dataset(root)
    folder = ImageFolder(root)
    files = scan_inference_folder(folder, INGESTION)
    (root / "Original/Benign/WBC-Benign-001.jpg").unlink()
    (root / "Original/Benign/WBC-Benign-002.jpg").write_bytes(b"")
    (root / "Original/Benign/WBC-Benign-003.jpg").unlink()
    (root / "Original/Benign/WBC-Benign-003.jpg").symlink_to(root / "Original/Benign/WBC-Benign-004.jpg")
    scored = score_images(files, folder, model, {"batch_size": 4}, PREPROCESSING, INGESTION)
    scored = scored.set_index("path")
    assert scored.loc["Original/Benign/WBC-Benign-001.jpg", "reason"] == "unreadable file"
    assert scored.loc["Original/Benign/WBC-Benign-002.jpg", "reason"] == "empty file"
    assert scored.loc["Original/Benign/WBC-Benign-002.jpg", ["predicted", *PROBABILITIES]].isna().all()
    # Swapped for a link since the scan: refused, never followed.
    assert scored.loc["Original/Benign/WBC-Benign-003.jpg", "reason"] == "symbolic link (not followed)"


@pytest.mark.parametrize(
    ("preprocessing", "makes"),
    [({"image_size": 48}, r"\(48, 48, 3\)"), ({"input_mode": "dual"}, r"\(32, 32, 6\)")],
)
def test_a_model_trained_on_other_inputs_is_refused_before_any_file_is_read(
    image_folder, model, preprocessing, makes
):
    root, _ = image_folder
    with pytest.raises(InferenceSetupError, match=rf"takes images of shape \(32, 32, 3\).*makes {makes}"):
        score(root, model, preprocessing={**PREPROCESSING, **preprocessing})


def test_an_empty_folder_gives_an_empty_table(tmp_path, model):
    scored = score(tmp_path, model)
    assert scored.empty
    assert list(scored.columns) == PREDICTION_COLUMNS


def test_a_missing_input_folder_stops_with_one_clear_error(tmp_path):
    with pytest.raises(InferenceSetupError, match=r"'.*nowhere' does not exist.*inference\.input_dir="):
        scan_inference_folder(ImageFolder(tmp_path / "nowhere"), INGESTION)


def test_a_missing_model_says_to_train_first(tmp_path):
    with pytest.raises(DatasetError, match=r"No trained model at '.*model\.keras'.*kedro run.*model_uri"):
        load_model(tmp_path / "data/06_models/model.keras")


def test_a_damaged_model_file_is_a_clear_error(tmp_path):
    damaged = tmp_path / "model.keras"
    damaged.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="could not be loaded as a Keras model"):
        load_model(damaged)


@pytest.fixture
def tracking_store(tmp_path: Path):
    """A throwaway SQLite MLflow store, its artifacts beside it, made current; the previous one restored."""
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(new_store(tmp_path / "mlflow.db"))
    experiment = mlflow.create_experiment("inference_test", artifact_location=str(tmp_path / "artifacts"))
    try:
        yield experiment
    finally:
        mlflow.set_tracking_uri(previous)


def test_a_model_is_loaded_from_an_mlflow_run(tracking_store, model_file, tmp_path):
    with mlflow.start_run(experiment_id=tracking_store) as run:
        mlflow.log_artifact(str(model_file), "model")
    classifier = load_model(tmp_path / "absent.keras", model_uri=f"runs:/{run.info.run_id}/model")
    assert classifier.input_shape == (None, 32, 32, 3)
    assert classifier.output_shape == (None, len(CLASSES))
    # A saved .keras file by its path works as well.
    assert load_model(tmp_path / "absent.keras", model_uri=str(model_file)).input_shape == (None, 32, 32, 3)
    with pytest.raises(DatasetError, match="Could not fetch the model 'runs:/0123/model'"):
        load_model(tmp_path / "absent.keras", model_uri="runs:/0123/model")


def test_the_pipeline_as_wired_scores_with_the_catalog_s_model(image_folder, model_file, predictions):
    root, _ = image_folder
    parameters = {"inference": {"batch_size": 32}, "ingestion": INGESTION, "preprocessing": PREPROCESSING}
    data = {"inference_images": ImageFolder(root), "model": KerasModelDataset(filepath=str(model_file))}
    # `predictions` is released once its last reader, the node keeping this run's copy, has run.
    scored = run_in_process(create_pipeline(), parameters, data)["predictions_of_run"]
    pd.testing.assert_frame_equal(scored, predictions)
