"""MLflow as a person reads it, from the store a fresh project's runs leave: the champion, the run's
metrics, dataset and tags, the registered versions, and a project folder that moves."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from all_detection.synthetic import synthetic_files
from tests.projects import run_session

# Real `kedro run`s of the project, end to end, into one SQLite store.
pytestmark = pytest.mark.slow

SMALL = {"preprocessing": {"image_size": 32}, "training": {"epochs": 2}}
SMALL_DEMO = {"demo": {"synthetic_dataset": {"per_class": 10, "image_size": 64, "seed": 42}}, **SMALL}


def _write_real_like_set(root: Path) -> None:
    """A folder laid out like the Kaggle download, as a user's real data would be (no demo marker):
    the generator's smears, which this run calls real (`dataset.synthetic` false)."""
    for name, content in synthetic_files(per_class=10, image_size=64, seed=7).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def _repin_store(project: Path) -> None:
    # tests/projects.py pins each copy's store to an absolute path (MLflow caches stores per URI in a
    # process); a user's mlflow.yml says sqlite:///mlflow.db, which moves with the folder.
    mlflow_yml = project / "conf" / "base" / "mlflow.yml"
    text = mlflow_yml.read_text()
    start = text.index("sqlite:///")
    end = text.index("mlflow.db", start) + len("mlflow.db")
    mlflow_yml.write_text(text[:start] + f"sqlite:///{project}/mlflow.db" + text[end:])


def test_a_fresh_project_crowns_the_real_model_never_the_demo_and_moves_with_its_folder(
    project_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # A new user's first run is the demo, into a store it creates; the second is on their own data.
    (project_copy / "mlflow.db").unlink()
    run_session(project_copy, env="demo", pipeline="__default__", **SMALL_DEMO)
    _write_real_like_set(project_copy / "data/01_raw/ALL")
    run_session(project_copy, pipeline="__default__", model={"base_weights": None}, **SMALL)

    client = mlflow.MlflowClient(f"sqlite:///{project_copy / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("all_detection").experiment_id])
    real, demo = runs  # newest first
    assert (
        demo.data.params["dataset.synthetic"] == "True" and real.data.params["dataset.synthetic"] == "False"
    )

    # The champion is the real model; the demo's is registered under its own name and never crowned.
    champion = client.get_model_version_by_alias("all_detection", "champion")
    assert champion.run_id == real.info.run_id and str(champion.version) == "1"
    (synthetic,) = client.search_model_versions("name='all_detection_synthetic'")
    # (search results carry no aliases: the registered model's list does)
    assert synthetic.run_id == demo.info.run_id and not client.get_registered_model(synthetic.name).aliases
    assert "synthetic" in synthetic.description and "never champion" in synthetic.description
    assert synthetic.tags["data.synthetic"] == "true"
    assert [version.run_id for version in client.search_model_versions("name='all_detection'")] == [
        real.info.run_id
    ]
    # Each version says what it was trained on and how it scored, in its description and tags.
    digest = real.data.params["data.manifest_sha256"]
    assert champion.tags["data.manifest_sha256"] == digest and champion.tags["data.synthetic"] == "false"
    assert champion.tags["image_size"] == "32" and champion.tags["input_mode"] == "original"
    assert champion.tags["stain_normalisation"] == "reinhard" and champion.tags["tta"] == "dihedral"
    accuracy = real.data.metrics["test_accuracy"]
    assert float(champion.tags["test_accuracy"]) == pytest.approx(accuracy)
    low, high = (float(champion.tags[f"test_accuracy_ci_{end}"]) for end in ("low", "high"))
    assert low <= accuracy <= high
    assert f"Test accuracy {accuracy:.3f} [{low:.3f}, {high:.3f}]" in champion.description
    assert "real smears from `data/01_raw/ALL`" in champion.description and "32 px" in champion.description

    # The run reads as a person expects: test numbers first, the history as train_* and val_*.
    metrics = list(real.data.metrics)
    assert metrics[0] == "test_accuracy"
    assert {"train_accuracy", "train_loss", "val_accuracy", "val_loss"} <= set(metrics)
    assert not {"accuracy", "loss", "learning_rate", "epoch_seconds"} & set(metrics)
    assert len(client.get_metric_history(real.info.run_id, "test_accuracy")) == 1
    assert real.info.run_name == "32px seed42 original reinhard cached default"
    assert demo.info.run_name.startswith("synthetic 32px seed42 ")
    # The data it saw, as an MLflow dataset with the manifest's digest.
    (dataset_input,) = real.inputs.dataset_inputs
    assert dataset_input.dataset.name == "ALL" and dataset_input.dataset.digest == digest[:32]
    assert "data/01_raw/ALL" in dataset_input.dataset.source
    assert {tag.key: tag.value for tag in dataset_input.tags}["mlflow.data.context"] == "training"
    # The test metrics on the logged model's page, on that dataset.
    logged = client.get_logged_model(champion.source.removeprefix("models:/"))
    on_model = {metric.key: metric for metric in logged.metrics}
    assert on_model["test_accuracy"].value == pytest.approx(accuracy)
    assert on_model["test_accuracy"].dataset_digest == digest[:32]
    assert not any(key.startswith(("train_", "val_")) for key in on_model)
    # One tag per fact, the command as it would be typed.
    assert real.data.tags["env"] == "local" and real.data.tags["kedro_command"] == "kedro run --params=" + (
        "model.base_weights=None,preprocessing.image_size=32,training.epochs=2"
    )
    assert demo.data.tags["env"] == "demo"
    assert not {"environment", "pipelines", "run_id", "runtime_params"} & set(demo.data.tags)
    assert demo.data.tags["kedro_command"].startswith("kedro run --env=demo --params=")
    assert "preprocessing.image_size=32" in demo.data.tags["kedro_command"]
    assert demo.data.tags["pipeline_names"] == "__default__"

    # The project folder moves: the documented command points the store at the new folder, whose
    # runs show their figures and whose champion loads.
    moved = tmp_path / "moved" / "project"
    moved.parent.mkdir()
    monkeypatch.chdir(tmp_path)
    shutil.move(project_copy, moved)
    _repin_store(moved)
    result = subprocess.run(
        [sys.executable, "-m", "all_detection.tracking_store"],
        cwd=moved, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "were rewritten" in result.stderr + result.stdout
    client = mlflow.MlflowClient(f"sqlite:///{moved / 'mlflow.db'}")
    run = client.get_run(real.info.run_id)
    assert run.info.artifact_uri.startswith((moved / "mlartifacts").as_uri())
    figure = client.download_artifacts(run.info.run_id, "figures/confusion_matrix.png", str(tmp_path))
    assert Path(figure).stat().st_size > 0
    mlflow.set_tracking_uri(f"sqlite:///{moved / 'mlflow.db'}")
    try:
        images = np.load(moved / "data/03_primary/test_images.npy").astype(np.float32)
        served = mlflow.pyfunc.load_model("models:/all_detection@champion").predict(images)
    finally:
        mlflow.set_tracking_uri(None)
    np.testing.assert_allclose(served.to_numpy().sum(axis=1), 1, rtol=1e-5)
    # A second relocation finds nothing to do.
    again = subprocess.run(
        [sys.executable, "-m", "all_detection.tracking_store"],
        cwd=moved, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert again.returncode == 0 and "were rewritten" not in again.stderr + again.stdout
