"""The registered model as users reach it: MLflow's pyfunc loader, and `mlflow models serve` over REST."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from all_detection.core.model import assemble_classifier, build_base, build_feature_extractor, build_head
from all_detection.datasets import MlflowModelRegistrationDataset
from all_detection.serving import crown_champion, servable_model
from tests.configuration import configured_parameters

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
    tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
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


def test_the_champion_alias_follows_the_best_test_accuracy(tmp_path: Path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        client = mlflow.MlflowClient()
        client.create_registered_model("all_detection")
        crowned = []
        for accuracy in (0.80, 0.70, 0.90, 0.90):
            version = client.create_model_version("all_detection", source=str(tmp_path / "model"))
            registration = {"registered": True, "name": "all_detection", "version": int(version.version)}
            crowned.append(crown_champion(registration, {"test": {"accuracy": accuracy}})["champion_version"])
        # Version 2 (0.70) and version 4 (a tie) do not displace the champion; version 3 (0.90) does.
        assert crowned == [1, 1, 3, 3]
        champion = client.get_model_version_by_alias("all_detection", "champion")
        assert str(champion.version) == "3" and champion.tags["test_accuracy"] == "0.900000"
        assert crown_champion({"registered": False}, {"test": {"accuracy": 1.0}}) == {"champion": False}
    finally:
        mlflow.set_tracking_uri(None)
