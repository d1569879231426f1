"""The studies' building blocks: variants (namespaced runs, their own parameters) and MLflow child runs."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from kedro.io import DatasetError
from kedro.pipeline import Node, Pipeline

from all_detection.datasets import MlflowChildRunsDataset
from all_detection.studies.wiring import model_run, variant
from tests.stores import new_store


def scale(values: list[float], factor: float) -> list[float]:
    return [value * factor for value in values]


def total(values: list[float]) -> float:
    return sum(values)


def describe(values: list[float], settings: dict) -> str:
    return f"{settings['name']}: {sum(values)}"


TOY = Pipeline(
    [
        Node(scale, ["values", "params:factor"], "scaled", name="scale_node"),
        Node(total, "scaled", "total", name="total_node"),
        Node(describe, ["scaled", "params:settings"], "description", name="describe_node"),
    ]
)


def test_a_variant_prefixes_its_datasets_but_shares_parameters_and_named_inputs():
    run = variant(TOY, "fold_1", shared=["values"])
    assert run.inputs() == {"values", "params:factor", "params:settings"}
    assert run.outputs() == {"fold_1.total", "fold_1.description"}
    renamed = variant(TOY, "paper", renamed={"values": "paper.views"})
    assert "paper.views" in renamed.inputs()
    assert {node.namespace for node in renamed.nodes} == {"paper"}


def test_a_variant_reads_the_parameters_it_overrides_from_its_own_section():
    run = variant(TOY, "masked_input", shared=["values"], overridden=["params:settings"])
    assert run.inputs() == {"values", "params:factor", "params:masked_input.settings"}
    describe_node = next(node for node in run.nodes if node.name == "masked_input.describe_node")
    assert describe_node.inputs == ["masked_input.scaled", "params:masked_input.settings"]


def test_a_study_s_model_run_trains_and_evaluates_but_registers_nothing():
    nodes = {node.name for node in model_run().nodes}
    assert {
        "cache_base_features_node",
        "fit_head_node",
        "assemble_metrics_node",
        "mlflow_run_node",
    } <= nodes
    assert "register_model_node" not in nodes


RECORD = {
    "params": {"split_sizes.test": 8, "input_mode": "masked"},
    "metrics": {
        "test_accuracy": {"value": 0.75, "step": 0},
        "val_accuracy": [{"value": 0.5, "step": 1}, {"value": 0.625, "step": 2}],
    },
    "reports": {"metrics.json": {"test": {"accuracy": 0.75}}},
}


def test_child_runs_are_nested_under_the_run_in_progress(tmp_path: Path):
    uri = new_store(tmp_path / "mlflow.db")
    mlflow.set_tracking_uri(uri)
    # Artifacts beside the store: MLflow's default, ./mlruns, would land in the project root.
    mlflow.create_experiment("all_detection", artifact_location=str(tmp_path / "artifacts"))
    experiment = mlflow.set_experiment("all_detection")
    with mlflow.start_run(run_name="protocol_comparison") as parent:
        MlflowChildRunsDataset(study="protocol_comparison").save({"paper": RECORD, "leakage_free": RECORD})
        assert mlflow.active_run().info.run_id == parent.info.run_id  # the parent stays the active run
    client = mlflow.MlflowClient(uri)
    children = client.search_runs(
        [experiment.experiment_id],
        f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        order_by=["start_time"],
    )
    assert [child.info.run_name for child in children] == ["paper", "leakage_free"]
    child = children[0]
    assert child.info.status == "FINISHED" and child.data.tags["study"] == "protocol_comparison"
    assert child.data.params == {"split_sizes.test": "8", "input_mode": "masked"}
    assert child.data.metrics == {"test_accuracy": 0.75, "val_accuracy": 0.625}
    history = client.get_metric_history(child.info.run_id, "val_accuracy")
    assert [(point.step, point.value) for point in history] == [(1, 0.5), (2, 0.625)]
    assert mlflow.artifacts.load_dict(f"runs:/{child.info.run_id}/reports/metrics.json") == {
        "test": {"accuracy": 0.75}
    }


def test_without_a_run_in_progress_children_are_top_level_runs_of_the_study(tmp_path: Path):
    uri = new_store(tmp_path / "mlflow.db")
    mlflow.set_tracking_uri(uri)
    # Artifacts beside the store: MLflow's default, ./mlruns, would land in the project root.
    mlflow.create_experiment("all_detection", artifact_location=str(tmp_path / "artifacts"))
    experiment = mlflow.set_experiment("all_detection")
    dataset = MlflowChildRunsDataset(study="cross_validation")
    dataset.save({"fold_1": RECORD})
    (run,) = mlflow.MlflowClient(uri).search_runs([experiment.experiment_id])
    assert run.info.run_name == "fold_1" and run.data.tags["study"] == "cross_validation"
    assert "mlflow.parentRunId" not in run.data.tags
    with pytest.raises(DatasetError, match=r"mlflow\.search_runs"):
        dataset.load()
