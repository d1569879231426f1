"""End to end, as users run it: a real KedroSession, real files on disk, a real SQLite MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from kedro_datasets.tensorflow import TensorFlowModelDataset

from all_detection.checks import ParameterError
from all_detection.layout import CLASSES
from tests.projects import run_session

# Real `kedro run`s of the project, end to end.
pytestmark = pytest.mark.slow

SMALL_DEMO = {"demo": {"synthetic_dataset": {"per_class": 10, "image_size": 64, "seed": 42}}}


def test_demo_environment_generates_its_dataset_and_ingests_it(project_copy: Path):
    run_session(project_copy, env="demo", **SMALL_DEMO)

    root = project_copy / "data/01_raw/demo_ALL"
    assert sorted(path.name for path in (root / "Original").iterdir()) == ["Benign", "Early", "Pre", "Pro"]
    manifest = pd.read_parquet(project_copy / "data/02_intermediate/manifest.parquet")
    assert len(manifest) == 2 * 4 * 10
    assert set(manifest["status"]) == {"ok"}
    assert {"path", "label", "status", "reason", "sha256", "group", "split"} <= set(manifest.columns)
    originals = manifest[manifest["folder"] == "Original"]
    assert (originals.groupby("label")["split"].apply(lambda s: (s == "test").sum()) == 2).all()

    quality = json.loads((project_copy / "data/08_reporting/data_quality.json").read_text())
    assert quality["files"] == {"total": 80, "ok": 80, "quarantined": 0}
    assert quality["images_per_class_and_split"]["Pro"] == {"train": 7, "val": 1, "test": 2, "total": 10}

    client = mlflow.MlflowClient(f"sqlite:///{project_copy / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("all_detection")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["dataset.root"] == "data/01_raw/demo_ALL"
    assert [artifact.path for artifact in client.list_artifacts(run.info.run_id, "reports")] == [
        "reports/data_quality.json"
    ]


def test_demo_default_pipeline_prepares_augments_and_trains(project_copy: Path):
    run_session(
        project_copy, env="demo", pipeline="__default__", **SMALL_DEMO, preprocessing={"image_size": 32}
    )

    inputs = project_copy / "data/03_primary"
    split_ids = {}
    for split, count in (("train", 28), ("val", 4), ("test", 8)):
        images = np.load(inputs / f"{split}_images.npy", mmap_mode="r")
        index = pd.read_parquet(inputs / f"{split}_index.parquet")
        assert images.shape == (count, 32, 32, 3) and images.dtype == np.uint8
        assert len(index) == count
        split_ids[split] = set(index["image_id"])
    views = np.load(inputs / "augmented_train_images.npy", mmap_mode="r")
    view_index = pd.read_parquet(inputs / "augmented_train_index.parquet")
    # By default each training image enters as its 8 exact symmetries.
    assert len(views) == len(view_index) == 28 * 8
    assert set(view_index["source_id"]) == split_ids["train"]
    assert not set(view_index["source_id"]) & (split_ids["val"] | split_ids["test"])

    quality = json.loads((project_copy / "data/08_reporting/data_quality.json").read_text())
    assert quality["files"]["total"] == 80
    assert set(quality["segmentation_agreement"]) == {"Benign", "Early", "Pre", "Pro"}
    assert quality["segmentation_agreement"]["Early"]["dice_mean"] > 0.5

    client = mlflow.MlflowClient(f"sqlite:///{project_copy / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("all_detection").experiment_id])
    assert run.info.status == "FINISHED"
    figures = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "figures")}
    assert {"figures/segmentation_examples.png", "figures/augmentation_examples.png"} <= figures
    assert {
        f"figures/{name}.png" for name in ("confusion_matrix", "roc_curves", "training_curves")
    } <= figures
    reports = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "reports")}
    assert {"reports/training_history.csv", "reports/training_summary.json"} <= reports

    # Without weights the demo trains from a random base and says so, loudly, in the run's record.
    summary = json.loads((project_copy / "data/08_reporting/training_summary.json").read_text())
    assert summary["base_weights"]["used"] == "None"
    assert "Falling back to random initialisation" in summary["base_weights"]["warning"]
    assert summary["feature_cache"]["images"] == len(views) + 4 + 8
    history = pd.read_csv(project_copy / "data/08_reporting/training_history.csv")
    assert len(history) == summary["epochs_run"] and history["epoch"].tolist()[0] == 1
    model = TensorFlowModelDataset(filepath=str(project_copy / "data/06_models/model.keras")).load()
    test_images = np.load(inputs / "test_images.npy").astype(np.float32)
    probabilities = model.predict(test_images, verbose=0)
    assert probabilities.shape == (8, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)

    # The run says where and on what it ran, and registered the model it trained.
    assert run.data.tags["env"] == "demo"
    assert run.data.tags["training_mode"] == "cached"
    assert run.data.tags["device"].startswith(("CPU", "GPU"))
    assert len(run.data.tags["git_commit"]) >= 7
    assert run.data.params["data.files"] == "80" and run.data.params["data.test_images"] == "8"
    assert len(run.data.params["data.manifest_sha256"]) == 64
    registration = json.loads((project_copy / "data/08_reporting/model_registration.json").read_text())
    # Trained on synthetic data: registered under its own name, never as the champion.
    assert registration["model_uri"] == "models:/all_detection_synthetic/1"
    assert registration["run_id"] == run.info.run_id
    (version,) = client.search_model_versions("name='all_detection_synthetic'")
    assert version.run_id == run.info.run_id and not client.get_registered_model(version.name).aliases
    assert not client.search_registered_models("name='all_detection'")
    mlflow.set_tracking_uri(f"sqlite:///{project_copy / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model("models:/all_detection_synthetic/1").predict(test_images)
    assert list(served.columns) == ["prob_Benign", "prob_Early", "prob_Pre", "prob_Pro"]
    np.testing.assert_allclose(served.to_numpy(), probabilities, rtol=1e-4, atol=1e-6)

    # Every default run audits its model for shortcuts, and says so in MLflow and the model card.
    audit_file = project_copy / "data/08_reporting/shortcut_audit.json"
    audit = json.loads(audit_file.read_text())
    assert set(audit["null_models"]) == {"colour_statistics", "corner_patches", "thumbnail"}
    assert {"unchanged", "pooled_stain", "stain_swap", "corners_painted", "background_flattened",
            "grey_levels"} <= set(audit["counterfactuals"])  # fmt: skip
    assert "follows_donor" in audit["counterfactuals"]["stain_swap"]
    assert audit["attention"]["available"] and set(audit["attention"]["per_class"]) == set(CLASSES)
    assert "reports/shortcut_audit.json" in reports and "figures/shortcut_audit.png" in figures
    logged = client.get_run(run.info.run_id).data.metrics
    assert logged["audit_stain_swap_accuracy"] == audit["counterfactuals"]["stain_swap"]["accuracy"]
    assert "audit_null_colour_statistics_accuracy" in logged and "audit_gradcam_blast_mask_share" in logged
    card = (project_copy / "data/08_reporting/model_card.md").read_text()
    assert "## What this model relies on" in card and "| stain swap |" in card

    # The audit runs alone on the trained model, and the same seed gives the same audit.
    run_session(project_copy, env="demo", pipeline="shortcut_audit", **SMALL_DEMO,
                preprocessing={"image_size": 32})  # fmt: skip
    assert json.loads(audit_file.read_text()) == audit


def test_demo_set_is_deterministic_and_not_rewritten(project_copy: Path):
    run_session(project_copy, env="demo", **SMALL_DEMO)
    image = project_copy / "data/01_raw/demo_ALL/Original/Pre/WBC-Malignant-Pre-003.jpg"
    first_bytes, first_time = image.read_bytes(), image.stat().st_mtime_ns
    run_session(project_copy, env="demo", **SMALL_DEMO)
    assert image.stat().st_mtime_ns == first_time
    # Without the record of what the demo wrote there, the folder could be anybody's: never written to.
    (project_copy / "data/01_raw/demo_ALL.contents.json").unlink()
    with pytest.raises(ParameterError, match=r"was not written by this project.*leave out --env demo"):
        run_session(project_copy, env="demo", **SMALL_DEMO)
    assert image.stat().st_mtime_ns == first_time
    (project_copy / "data/01_raw/demo_ALL").rename(project_copy / "data/01_raw/elsewhere")
    run_session(project_copy, env="demo", **SMALL_DEMO)
    assert image.read_bytes() == first_bytes
    # Another recipe replaces the whole set, files of the old one included.
    run_session(project_copy, env="demo", demo={"synthetic_dataset": {"per_class": 2, "image_size": 48}})
    assert not image.exists() and len(list((project_copy / "data/01_raw/demo_ALL").rglob("*.jpg"))) == 16


def test_the_demo_never_writes_into_a_folder_it_did_not_make(project_copy: Path):
    other = project_copy / "my_images"
    (other / "Original" / "Pro").mkdir(parents=True)
    (other / "Original" / "Pro" / "mine.jpg").write_bytes(b"someone's image")
    with pytest.raises(ParameterError, match="leave out --env demo"):
        run_session(project_copy, env="demo", dataset={"root": str(other)}, **SMALL_DEMO)
    assert [path.name for path in other.rglob("*.*")] == ["mine.jpg"]
    assert not (project_copy / "data" / "02_intermediate").exists()
    # A new folder is the demo's own to fill.
    run_session(project_copy, env="demo", dataset={"root": str(project_copy / "new_demo")}, **SMALL_DEMO)
    assert len(list((project_copy / "new_demo").rglob("*.jpg"))) == 80


def test_ingestion_of_a_defective_folder_keeps_every_file_and_quarantines_only_bad_ones(
    project_copy: Path, defective_dataset: tuple[Path, dict]
):
    root, expected = defective_dataset
    run_session(project_copy, dataset={"root": str(root)})

    manifest = pd.read_parquet(project_copy / "data/02_intermediate/manifest.parquet")
    verdicts = {row.path: None if pd.isna(row.reason) else row.reason for row in manifest.itertuples()}
    assert verdicts == expected
    usable = manifest[(manifest["status"] == "ok") & (manifest["folder"] == "Original")]
    assert usable.groupby("group")["split"].nunique().max() == 1


def test_a_missing_dataset_root_stops_with_one_clear_error(project_copy: Path):
    with pytest.raises(ParameterError, match="nowhere/ALL': no such folder"):
        run_session(project_copy, dataset={"root": str(project_copy / "nowhere/ALL")})
    # Refused before anything ran: no MLflow run was opened for it.
    client = mlflow.MlflowClient(f"sqlite:///{project_copy / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("all_detection")
    assert experiment is None or not client.search_runs([experiment.experiment_id])

    kedro = Path(sys.executable).with_name("kedro")
    result = subprocess.run(
        [str(kedro), "run", "--pipeline", "ingestion", "--params", "dataset.root=nowhere/ALL"],
        cwd=project_copy,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert result.returncode == 1
    assert "Error: The run's parameters cannot be used" in result.stderr
    assert "dataset.root = 'nowhere/ALL': no such folder" in result.stderr
    assert "Original/{Benign,Early,Pre,Pro}/*.jpg" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_two_first_runs_at_once_both_succeed_and_are_both_recorded(project_copy: Path, tmp_path: Path):
    from all_detection.synthetic import write_synthetic_dataset  # noqa: PLC0415

    root = tmp_path / "ALL"
    write_synthetic_dataset(root, per_class=3, image_size=48, seed=1)
    (project_copy / "mlflow.db").unlink()  # a fresh project: the two runs race to create the store
    kedro = Path(sys.executable).with_name("kedro")
    command = [str(kedro), "run", "--pipeline", "ingestion", "--params", f"dataset.root={root}"]
    runs = [
        subprocess.Popen(
            command, cwd=project_copy, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{project_copy / 'mlflow.db'}")
    recorded = client.search_runs([client.get_experiment_by_name("all_detection").experiment_id])
    assert [run.info.status for run in recorded] == ["FINISHED", "FINISHED"]


def test_a_run_ends_with_its_figures_paths_and_mlflow_run(project_copy: Path):
    kedro = Path(sys.executable).with_name("kedro")
    params = ("demo.synthetic_dataset.per_class=8,demo.synthetic_dataset.image_size=64,"
              "preprocessing.image_size=32,training.epochs=2")  # fmt: skip
    # A user's shell: JAX, imported in this test process, sets TF_CPP_MIN_LOG_LEVEL=1 for its children.
    shell = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [str(kedro), "run", "--env", "demo", "--params", params],
        cwd=project_copy, capture_output=True, text=True, env={**shell, "COLUMNS": "400"}, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    # No false alarms: autologging is off, and the deprecations and op mismatches are not ours.
    for alarm in ("while enabling autologging", "use_unbounded_threadpool", "register_new_resolver",
                  "relative tracking", "Add type hints", "failed call to cuInit", "DT_UINT8",
                  "retracing", "Mean of empty slice"):  # fmt: skip
        assert alarm not in log, log[max(0, log.find(alarm) - 1500) : log.find(alarm) + 200]
    summary = log[log.index("Run summary") :]
    assert "Test accuracy" in summary and "bootstrap intervals" in summary
    assert "random weights, not ImageNet's" in summary  # offline, the demo's base is random
    assert str(project_copy / "data/08_reporting/model_card.md") in summary
    assert str(project_copy / "data/08_reporting/shortcut_audit.json") in summary
    assert "Shortcut audit: colour alone (no cell shapes) scores" in summary
    assert f"{project_copy}/mlflow.db" in summary
    assert "MLflow run 'synthetic 32px seed42 original reinhard cached default'" in summary
    client = mlflow.MlflowClient(f"sqlite:///{project_copy / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("all_detection").experiment_id])
    assert run.info.run_name == "synthetic 32px seed42 original reinhard cached default"
    assert run.data.tags["runner"] == "SequentialRunner"
    assert run.data.tags["kedro_command"] == f"kedro run --env demo --params {params}"
    assert "cached training" in run.data.tags["mlflow.note.content"]


def test_each_inference_run_keeps_its_own_predictions(project_copy: Path, tmp_path: Path):
    from all_detection.synthetic import write_synthetic_dataset  # noqa: PLC0415

    run_session(project_copy, env="demo", pipeline="__default__", **SMALL_DEMO,
                preprocessing={"image_size": 32}, training={"epochs": 1})  # fmt: skip
    images = tmp_path / "to_score"
    write_synthetic_dataset(images, per_class=1, image_size=48, seed=5)
    for _ in range(2):
        run_session(project_copy, env="demo", pipeline="inference", **SMALL_DEMO,
                    preprocessing={"image_size": 32}, inference={"input_dir": str(images)})  # fmt: skip
    latest = pd.read_csv(project_copy / "data/07_model_output/predictions.csv")
    kept = sorted(
        (project_copy / "data/07_model_output/predictions_by_run/predictions.csv").glob("*/predictions.csv")
    )
    assert len(kept) == 2
    pd.testing.assert_frame_equal(pd.read_csv(kept[-1]), latest)
