"""The registered model as users reach it: MLflow's pyfunc loader, and `mlflow models serve` over REST."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from all_detection.core.model import assemble_classifier, build_base, build_feature_extractor, build_head
from all_detection.datasets import MlflowModelRegistrationDataset
from all_detection.provenance import manifest_provenance
from all_detection.serving import (
    Champion,
    champion_decision,
    record_model_version,
    registered_name,
    servable_model,
)
from tests.configuration import configured_parameters
from tests.stores import new_store

# Registers a model and serves it over REST.
pytestmark = pytest.mark.slow

PROJECT = Path(__file__).parents[1]
HEAD = configured_parameters()["model"]["head"]


def _serving_benchmark():
    spec = importlib.util.spec_from_file_location("serving_benchmark", PROJECT / "benchmarks" / "serving.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    return benchmark


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory):
    """A tiny trained-shape model registered once in a throwaway SQLite store, and some images for it."""
    store = tmp_path_factory.mktemp("serving")
    tracking_uri = new_store(store / "mlflow.db")
    mlflow.set_tracking_uri(tracking_uri)
    # Earlier runs in this process leave their experiment active; this store has its own, with its
    # artifacts beside it rather than in ./mlruns.
    experiment = mlflow.create_experiment("all_detection", (store / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    base, _ = build_base(32, None)
    extractor = build_feature_extractor(base, 3, "imagenet")
    model = assemble_classifier(extractor, build_head(extractor.output_shape[1:], HEAD))
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3)).astype(np.float32)
    # As the catalog's model_registration registers the model training saves: within the run in progress.
    record = MlflowModelRegistrationDataset(str(store / "model_registration.json"), "all_detection")
    with mlflow.start_run():
        record.save(servable_model(model, images))
    registration = record.load()
    yield registration, model, images, tracking_uri
    mlflow.set_tracking_uri(None)


def test_registration_adds_a_version_with_a_signature(registered):
    registration = registered[0]
    assert registration["model_uri"] == "models:/all_detection/1"
    info = mlflow.models.get_model_info(registration["model_uri"])
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 32, 32, 3)
    assert [column["name"] for column in info.signature.outputs.to_dict()] == [
        "prob_Benign", "prob_Early", "prob_Pre", "prob_Pro",
    ]  # fmt: skip
    assert info.saved_input_example_info is not None


def test_the_model_is_logged_from_code_and_loads_no_pickle(registered, tmp_path: Path):
    logged = Path(mlflow.artifacts.download_artifacts(registered[0]["model_uri"], dst_path=str(tmp_path)))
    pyfunc = yaml.safe_load((logged / "MLmodel").read_text())["flavors"]["python_function"]
    assert pyfunc["model_code_path"].endswith("served_model.py") and "python_model" not in pyfunc
    assert not [path for path in logged.rglob("*") if path.suffix in {".pkl", ".pickle", ".cloudpickle"}]
    # A fresh environment for it gets what it imports, pinned to the versions it was saved with.
    requirements = (logged / "requirements.txt").read_text().split()
    names = {requirement.split("==")[0] for requirement in requirements}
    assert {"mlflow", "keras", "numpy", "pandas"} <= names and names & {"tensorflow", "tensorflow-cpu", "jax"}
    assert f"keras=={keras.__version__}" in requirements and "all-detection" not in names


def test_pyfunc_loader_gives_the_keras_models_probabilities(registered):
    registration, model, images, _ = registered
    served = mlflow.pyfunc.load_model(registration["model_uri"]).predict(images)
    np.testing.assert_allclose(served.to_numpy(), model.predict(images, verbose=0), rtol=1e-5, atol=1e-6)


def test_mlflow_models_serve_answers_a_concurrent_burst_correctly(registered):
    """24 requests of 1 to 3 images, 6 at a time, to `mlflow models serve` on localhost: every answer
    is the Keras model's own probabilities for the images that request sent."""
    registration, model, images, tracking_uri = registered
    benchmark = _serving_benchmark()
    rng = np.random.default_rng(1)
    batches = [images[rng.choice(len(images), size=1 + number % 3, replace=False)] for number in range(24)]
    with benchmark.served(registration["model_uri"], tracking_uri) as url:
        answers, wall_seconds = benchmark.send_burst(url, batches, concurrency=6)
    benchmark.check_answers(answers, batches)
    for answer, batch in zip(answers, batches, strict=True):
        expected = model.predict(batch, verbose=0)
        np.testing.assert_allclose(answer.probabilities, expected, rtol=1e-4, atol=1e-6)
    summary = benchmark.load_summary(answers, wall_seconds)
    assert summary["requests"] == 24 and summary["latency_p99_s"] >= summary["latency_p50_s"] > 0


def _metrics(accuracy: float) -> dict:
    """metrics.json as evaluation assembles it, with what a version's record reads."""
    return {
        "test": {
            "accuracy": accuracy,
            "n": 40,
            "confidence_intervals": {"accuracy": [accuracy - 0.1, accuracy]},
        },
        "run": {
            "image_size": 224,
            "input_mode": "original",
            "mode": "cached",
            "split_sizes": {"train": 100, "train_views": 800, "val": 20, "test": 40},
            "recipe": {"cache_at": "block5_pool", "stain_normalisation": "reinhard", "tta": "dihedral"},
        },
    }


def _manifest(seed: int) -> pd.DataFrame:
    rows = [
        (f"Original/Benign/{k}.jpg", "Benign", "ok", f"{seed}-{k}", "train", "Original") for k in range(4)
    ]
    return pd.DataFrame(rows, columns=["path", "label", "status", "sha256", "split", "folder"])


def test_the_champion_is_the_best_on_the_same_test_images_and_never_synthetic(tmp_path: Path):
    mlflow.set_tracking_uri(new_store(tmp_path / "mlflow.db"))
    experiment = mlflow.create_experiment("champion", (tmp_path / "artifacts").as_uri())
    dataset = {"root": "data/01_raw/ALL", "synthetic": False}
    try:
        client = mlflow.MlflowClient()

        def register(accuracy: float, manifest: pd.DataFrame, synthetic: bool = False) -> dict:
            name = registered_name(synthetic)
            with mlflow.start_run(experiment_id=experiment) as run:
                mlflow.log_params({**manifest_provenance(manifest), "dataset.synthetic": synthetic})
                if not client.search_registered_models(f"name='{name}'"):
                    client.create_registered_model(name)
                version = client.create_model_version(
                    name, source=str(tmp_path / "model"), run_id=run.info.run_id
                )
                registration = {"registered": True, "name": name, "version": int(version.version)}
                return record_model_version(
                    registration, _metrics(accuracy), manifest, {**dataset, "synthetic": synthetic}
                )

        same, other = _manifest(1), _manifest(2)
        # A synthetic model goes to its own registered model, and is never champion.
        demo = register(0.99, same, synthetic=True)
        assert demo["name"] == "all_detection_synthetic" and not demo["champion"]
        assert not client.get_model_version("all_detection_synthetic", "1").aliases
        # On one manifest the best test accuracy holds the alias; a tie does not displace it.
        holders = [register(accuracy, same)["champion_version"] for accuracy in (0.80, 0.70, 0.90, 0.90)]
        assert holders == [1, 1, 3, 3]
        # Another manifest (other files or another split) is not compared, however high it scores.
        elsewhere = register(0.99, other)
        assert not elsewhere["champion"] and elsewhere["champion_version"] == 3
        assert "not comparable" in elsewhere["decision"]
        champion = client.get_model_version_by_alias("all_detection", "champion")
        assert str(champion.version) == "3" and champion.tags["test_accuracy"] == "0.900000"
        assert champion.tags["data.manifest_sha256"] == manifest_provenance(same)["data.manifest_sha256"]
        assert "Test accuracy 0.900 [0.800, 0.900] on 40 test images" in champion.description
        assert "beats version 1's 0.8000" in champion.description
        assert record_model_version({"registered": False}, _metrics(1.0), same, dataset) == {
            "registered": False,
            "champion": False,
        }
    finally:
        mlflow.set_tracking_uri(None)


def test_a_synthetic_champion_left_by_an_older_version_is_replaced():
    held = Champion(version="1", test_accuracy=0.75, manifest_sha256="a" * 64, synthetic=True)
    assert champion_decision(held, 0.60, "b" * 64, synthetic=False)[0]
    assert not champion_decision(None, 1.0, "b" * 64, synthetic=True)[0]
