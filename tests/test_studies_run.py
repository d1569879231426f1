"""The studies end to end on the demo set, as users run them: `kedro run --env demo --pipeline <study>`,
then the notebooks top to bottom against what the runs wrote, and `kedro viz build` over every pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient

import all_detection.pipelines
from tests.projects import copy_project, run_session

# Runs the three studies and the notebooks on the demo set.
pytestmark = pytest.mark.slow

STUDIES = ("protocol_comparison", "cross_validation", "input_mode_comparison")
# Small enough for CI: 40 images of 32 px, 2 epochs, 2 folds.
TINY = {
    "demo": {"synthetic_dataset": {"per_class": 10, "image_size": 64, "seed": 42}},
    "preprocessing": {"image_size": 32},
    "training": {"epochs": 2},
    # One view per test image: the 8 dihedral views would only cost each variant their compilation.
    "evaluation": {"bootstrap_samples": 100, "tta": "none"},
    "cross_validation": {"folds": 2},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    project = copy_project(tmp_path_factory.mktemp("studies") / "project")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        for study in STUDIES:
            run_session(project, env="demo", pipeline=study, **TINY)
        yield project


def study_runs(project: Path, study: str) -> tuple[mlflow.entities.Run, list[mlflow.entities.Run]]:
    """The study's MLflow run and its child runs, oldest child first."""
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("all_detection")
    (parent,) = client.search_runs([experiment.experiment_id], f"tags.pipeline_names = '{study}'")
    children = client.search_runs(
        [experiment.experiment_id],
        f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        order_by=["start_time"],
    )
    return parent, children


def test_protocol_comparison_reports_both_protocols_with_their_measured_leakage(project: Path):
    report = json.loads((project / "data/08_reporting/protocol_comparison.json").read_text())
    paper, leakage_free = report["protocols"]["paper"], report["protocols"]["leakage_free"]
    for protocol in (paper, leakage_free):
        assert 0 <= protocol["test"]["accuracy"] <= 1 and len(protocol["test"]["accuracy_ci"]) == 2
    # The paper's split follows augmentation: nearly every test view has a sibling in training.
    assert paper["leakage"]["test"]["fraction_same_source"] > 0.5
    # Every image's 8 exact symmetries (the default views), split at random.
    assert paper["split_sizes"]["test"] == pytest.approx(0.2 * 4 * 10 * 8, abs=4)
    assert leakage_free["leakage"]["test"]["same_source_in_training"] == 0
    assert leakage_free["leakage"]["test"]["same_group_in_training"] == 0
    assert leakage_free["split_sizes"] == {"train": 28, "train_views": 28 * 8, "val": 4, "test": 8}
    assert leakage_free["test_accuracy_by_view"]["unaugmented"]["n"] == 8
    by_view = paper["test_accuracy_by_view"]
    assert by_view["unaugmented"]["n"] + by_view["augmented"]["n"] == paper["test"]["n"]
    assert (project / "data/08_reporting/protocol_comparison.png").stat().st_size > 0
    card = (project / "data/08_reporting/paper/model_card.md").read_text()
    assert "Leaky protocol" in card
    assert "Leaky protocol" not in (project / "data/08_reporting/leakage_free/model_card.md").read_text()

    parent, children = study_runs(project, "protocol_comparison")
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["leakage_free_test_leaked_fraction"] == 0
    assert [child.info.run_name for child in children] == ["paper", "leakage_free"]
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["study"] == "protocol_comparison"
        assert len(client.get_metric_history(child.info.run_id, "val_accuracy")) == 2  # one per epoch
        assert "test_accuracy_ci_low" in child.data.metrics
    assert children[0].data.params["leakage.test.fraction_same_source"] != "0.0"
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id, "paper/figures")}
    assert "paper/figures/confusion_matrix.png" in artifacts
    # Each child run holds its model's reports, the model card among them.
    reports = {item.path for item in client.list_artifacts(children[0].info.run_id, "reports")}
    assert {"reports/metrics.json", "reports/model_card.md", "reports/classification_report.txt"} <= reports
    card = client.download_artifacts(children[0].info.run_id, "reports/model_card.md", str(project))
    assert "Leaky protocol" in Path(card).read_text()
    # A study trains models for comparison; none becomes a version of the registered model.
    assert client.search_model_versions("name='all_detection'") == []


def test_cross_validation_tests_every_image_once_and_logs_each_fold(project: Path):
    summary = json.loads((project / "data/08_reporting/cross_validation.json").read_text())
    # --params cross_validation.folds=2 shaped the run's pipeline.
    assert summary["k"] == 2 and list(summary["folds"]) == ["fold_1", "fold_2"]
    assert sum(fold["test"]["n"] for fold in summary["folds"].values()) == 40
    accuracies = [fold["test"]["accuracy"] for fold in summary["folds"].values()]
    assert summary["across_folds"]["test_accuracy"]["mean"] == pytest.approx(np.mean(accuracies), abs=1e-6)
    folds = pd.read_parquet(project / "data/03_primary/cross_validation_folds.parquet")
    assert len(folds) == 40 and (folds.groupby("group")["fold"].nunique() == 1).all()
    # Each fold is a namespace saving what a `kedro run` saves, in a folder named after it.
    for fold in ("fold_1", "fold_2"):
        reports = project / "data/08_reporting" / fold
        assert {"metrics.json", "model_card.md"} <= {path.name for path in reports.iterdir()}
        assert (reports / "figures" / "confusion_matrix.png").stat().st_size > 0
        assert (project / "data/06_models" / fold / "model.keras").is_file()
        split = pd.read_parquet(project / "data/03_primary" / fold / "fold_index.parquet")
        assert (split["split"] == "test").sum() == summary["folds"][fold]["test"]["n"]

    parent, children = study_runs(project, "cross_validation")
    assert [child.info.run_name for child in children] == ["fold_1", "fold_2"]
    assert parent.data.metrics["cv_test_accuracy_mean"] == pytest.approx(np.mean(accuracies), abs=1e-6)
    assert children[0].data.params["split_sizes.test"] == str(summary["folds"]["fold_1"]["test"]["n"])


def test_input_mode_comparison_trains_one_model_per_mode(project: Path):
    table = pd.read_csv(project / "data/08_reporting/input_mode_comparison.csv")
    assert table["input_mode"].tolist() == ["original", "segmented", "masked", "dual"]
    assert (table["test_n"] == 8).all()
    for mode in table["input_mode"]:
        metrics = json.loads((project / f"data/08_reporting/{mode}_input/metrics.json").read_text())
        assert metrics["run"]["input_mode"] == mode
        images = np.load(project / f"data/03_primary/{mode}_input/test_images.npy", mmap_mode="r")
        assert images.shape == (8, 32, 32, 6 if mode == "dual" else 3)
    segmented = np.load(project / "data/03_primary/segmented_input/test_images.npy")
    original = np.load(project / "data/03_primary/original_input/test_images.npy")
    assert (segmented == 0).mean() > (original == 0).mean()  # cells on black
    _, children = study_runs(project, "input_mode_comparison")
    assert [child.info.run_name for child in children] == ["original", "segmented", "masked", "dual"]


def test_the_notebooks_run_top_to_bottom_on_the_demo_outputs(project: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KEDRO_ENV", "demo")
    # The kernel is this interpreter's: its folder first on PATH, where the ipykernel spec says `python`.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    printed = {}
    for path in sorted((project / "notebooks").glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(not cell.outputs and cell.execution_count is None for cell in code), "stored with outputs"
        NotebookClient(notebook, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()  # fmt: skip
        printed[path.name] = "".join(
            output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", [])
        )
    assert set(printed) == {"01_explore_dataset.ipynb", "02_compare_runs.ipynb"}
    assert f"80 files under {project}/data/01_raw/demo_ALL" in printed["01_explore_dataset.ipynb"]
    assert "3 studies found" in printed["02_compare_runs.ipynb"]
    assert not (project / "notebooks" / "mlflow.db").exists()  # the store is the project's, not a new one


def test_kedro_viz_builds_a_static_site_showing_every_pipeline(project: Path):
    kedro = Path(sys.executable).parent / "kedro"
    subprocess.run([str(kedro), "viz", "build"], cwd=project, check=True, capture_output=True, timeout=600)
    site = json.loads((project / "build/api/main").read_text())
    assert (project / "build/index.html").is_file()
    stages = {
        path.parent.name for path in Path(all_detection.pipelines.__file__).parent.glob("*/pipeline.py")
    }
    # Outside the demo environment the demo pipeline is not registered.
    assert {pipeline["id"] for pipeline in site["pipelines"]} == {"__default__", *stages, *STUDIES} - {"demo"}
    assert {"ingestion", "training", "inference"} <= stages
    layers = ["01_raw", "02_intermediate", "03_primary", "04_feature", "06_models", "07_model_output"]
    layers.append("08_reporting")  # the data folders' names, in their order
    assert site["layers"] == layers
    for study, namespaces in (
        ("protocol_comparison", {"paper", "leakage_free"}),
        ("input_mode_comparison", {"original_input", "segmented_input", "masked_input", "dual_input"}),
        # Outside a run, the fold count comes from the project's conf (5).
        ("cross_validation", {f"fold_{fold}" for fold in range(1, 6)}),
    ):
        graph = json.loads((project / f"build/api/pipelines/{study}").read_text())
        assert namespaces <= set(graph["modular_pipelines"])  # each collapses into one box
        # kedro-viz turns layers off for a pipeline whose layers form a cycle (a box taking a report
        # and giving features): each study's graph keeps the project's layers, in order.
        assert graph["layers"] == layers, study
        tasks = [node for node in graph["nodes"] if node["type"] == "task"]
        assert tasks and all(node["tags"] for node in tasks)
    # The image folders are datasets like any other: in the 01_raw layer, feeding the nodes that read them.
    for pipeline, folder in (("__default__", "raw_images"), ("inference", "inference_images")):
        graph = json.loads((project / f"build/api/pipelines/{pipeline}").read_text())
        (node,) = [node for node in graph["nodes"] if node["name"] == folder]
        assert node["type"] == "data" and node["layer"] == "01_raw", node
        assert any(edge["source"] == node["id"] for edge in graph["edges"])
