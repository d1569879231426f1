"""The registered model as users reach it: MLflow's pyfunc loader, and `mlflow models serve` over REST."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from all_detection.core.model import assemble_classifier, build_base, build_feature_extractor, build_head
from all_detection.serving import crown_champion, register_model

HEAD = yaml.safe_load((Path(__file__).parents[1] / "conf/base/parameters_training.yml").read_text())["model"][
    "head"
]


@pytest.fixture
def registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A tiny trained-shape model registered in a throwaway SQLite store, and some images for it."""
    monkeypatch.chdir(tmp_path)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    # Earlier runs in this process leave their experiment active; this store has its own.
    mlflow.set_experiment("all_detection")
    base, _ = build_base(32, None)
    extractor = build_feature_extractor(base, 3, "imagenet")
    model = assemble_classifier(extractor, build_head(extractor.output_shape[1:], HEAD))
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3)).astype(np.float32)
    with mlflow.start_run():
        registration = register_model(model, images)
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


def test_pyfunc_loader_gives_the_keras_models_probabilities(registered):
    registration, model, images, _ = registered
    served = mlflow.pyfunc.load_model(registration["model_uri"]).predict(images)
    np.testing.assert_allclose(served.to_numpy(), model.predict(images, verbose=0), rtol=1e-5, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_mlflow_models_serve_answers_over_rest_on_localhost(registered):
    registration, model, images, tracking_uri = registered
    port = _free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    # The server starts uvicorn by name: it must find the one beside this interpreter.
    path = f"{mlflow_cli.parent}{os.pathsep}{os.environ['PATH']}"
    environment = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}
    server = subprocess.Popen(
        [str(mlflow_cli), "models", "serve", "-m", registration["model_uri"], "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                assert server.poll() is None, "mlflow models serve exited"
                assert time.monotonic() < deadline, "mlflow models serve did not come up in 120 s"
                time.sleep(1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": images.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            predictions = json.loads(answer.read())["predictions"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    probabilities = np.array(
        [[row[f"prob_{label}"] for label in ("Benign", "Early", "Pre", "Pro")] for row in predictions]
    )
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(probabilities, model.predict(images, verbose=0), rtol=1e-4, atol=1e-6)


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
