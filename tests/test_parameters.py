"""Parameters are checked before a run does any work, with a message naming each bad one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from all_detection.parameters import ParameterError, check_parameters, check_paths, sections_read
from all_detection.pipelines.inference.pipeline import create_pipeline as inference_pipeline
from all_detection.pipelines.ingestion.pipeline import create_pipeline as ingestion_pipeline
from tests.configuration import configured_parameters
from tests.projects import run_session


def with_value(parameters: dict, dotted: str, value) -> dict:
    changed = {
        key: dict(section) if isinstance(section, dict) else section for key, section in parameters.items()
    }
    *sections, last = dotted.split(".")
    target = changed
    for key in sections:
        target[key] = dict(target[key])
        target = target[key]
    target[last] = value
    return changed


@pytest.mark.parametrize("env", ["base", "demo"])
def test_the_shipped_parameters_are_valid(env):
    check_parameters(configured_parameters(env))


@pytest.mark.parametrize(
    ("dotted", "value", "named"),
    [
        ("split.test_fraction", 1.5, "split.test_fraction = 1.5"),
        ("split.val_fraction", 0.85, "split.test_fraction + split.val_fraction must be below 1"),
        ("preprocessing.image_size", 0, "preprocessing.image_size = 0"),
        ("augmentation.multiplier", -1, "augmentation.multiplier = -1"),
        ("augmentation.multiplier", 5, "augmentation.multiplier = 5"),
        ("training.epochs", 0, "training.epochs = 0"),
        ("training.mode", "fast", "training.mode = 'fast'"),
        ("training.batch_size", "large", "training.batch_size = 'large'"),
        ("training.cache_at", "block6_pool", "training.cache_at = 'block6_pool'"),
        ("evaluation.tta", "flips", "evaluation.tta = 'flips'"),
        ("cross_validation.folds", 1, "cross_validation.folds = 1"),
        ("training.epoch", 3, "training.epoch = 3"),
    ],
)  # fmt: skip
def test_each_bad_value_is_named_with_what_was_given(dotted, value, named):
    with pytest.raises(ParameterError) as raised:
        check_parameters(with_value(configured_parameters(), dotted, value))
    assert any(named in problem for problem in raised.value.problems), raised.value.problems
    assert "nothing was run" in raised.value.message


def test_a_multiplier_below_one_for_one_class_is_named():
    parameters = with_value(configured_parameters(), "augmentation.multiplier.Pro", 0.5)
    with pytest.raises(ParameterError, match=r"augmentation\.multiplier\.Pro = 0\.5"):
        check_parameters(parameters)


def test_paths_are_checked_only_for_the_sections_a_pipeline_reads(tmp_path: Path):
    parameters = with_value(configured_parameters(), "dataset.root", str(tmp_path / "missing"))
    parameters = with_value(parameters, "model.base_weights", str(tmp_path / "missing.h5"))
    parameters = with_value(parameters, "inference.input_dir", str(tmp_path / "nothing"))
    assert sections_read(ingestion_pipeline()) >= {"dataset"}
    with pytest.raises(ParameterError) as raised:
        check_paths(parameters, {"dataset", "model", "inference"})
    assert [problem.split(" = ")[0] for problem in raised.value.problems] == [
        "dataset.root", "model.base_weights", "inference.input_dir",
    ]  # fmt: skip
    check_paths(parameters, set())  # a pipeline that reads none of them is not stopped
    assert "dataset" not in sections_read(inference_pipeline())
    # The demo writes its own dataset, and falls back to a random base without weights.
    demo = with_value(with_value(parameters, "demo", {"synthetic_dataset": {"per_class": 2}}),
                      "model.random_weights_fallback", True)  # fmt: skip
    check_paths(demo, {"dataset", "model"})


def test_a_run_with_a_bad_parameter_stops_before_any_node_or_mlflow_run(project_copy: Path):
    with pytest.raises(ParameterError, match=r"split\.test_fraction = 1\.5"):
        run_session(project_copy, split={"test_fraction": 1.5})
    assert not (project_copy / "data" / "02_intermediate").exists()
    client = mlflow.MlflowClient(f"sqlite:///{project_copy / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("all_detection")
    assert experiment is None or not client.search_runs([experiment.experiment_id])


def test_a_missing_weights_file_stops_the_run_before_ingestion(project_copy: Path, tmp_path: Path):
    weights = {"base_weights": str(tmp_path / "x.h5"), "random_weights_fallback": False}
    with pytest.raises(ParameterError, match=r"model\.base_weights"):
        run_session(project_copy, pipeline="__default__", env="demo", model=weights)
    assert not (project_copy / "data" / "02_intermediate").exists()


def test_the_command_line_refuses_a_bad_parameter_before_importing_any_pipeline(project_copy: Path):
    """The refusal comes before the pipelines, and with them TensorFlow (seconds of the start-up), are
    imported: Python's own import log shows neither."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "kedro", "run", "--params", "training.epochs=0"],
        cwd=project_copy, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "training.epochs = 0" in result.stderr and "Traceback" not in result.stderr
    log = result.stderr.splitlines()
    imported = {line.rsplit("|", 1)[-1].strip() for line in log if line.startswith("import time:")}
    assert "all_detection.hooks" in imported  # the project and its hooks did load
    assert not {"tensorflow", "keras", "all_detection.pipelines"} & imported
