"""Parameters are checked before a run does any work, with a message naming each bad one."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Literal, get_args, get_origin

import mlflow
import pytest
from kedro.io import DataCatalog
from pydantic import BaseModel

from all_detection import layout, parameters
from all_detection.checks import ParameterError, check_parameters, check_sources
from all_detection.core import choices
from all_detection.datasets import ImageFolderDataset, KerasModelDataset
from all_detection.pipelines import demo, inference, ingestion, training
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
        ("training.fine_tune_blocks", 6, "training.fine_tune_blocks = 6"),
        ("preprocessing.segmentation.channel_order", "bgr", "segmentation.channel_order = 'bgr'"),
        ("preprocessing.segmentation.hsv_ranges", [[[120, 45]]], "preprocessing.segmentation.hsv_ranges"),
        ("preprocessing.segmentation.hsv_ranges", [], "preprocessing.segmentation.hsv_ranges = []"),
        ("preprocessing.segmentation.opening_px", -1, "preprocessing.segmentation.opening_px = -1"),
        ("preprocessing.masked.background_level", 2, "preprocessing.masked.background_level = 2"),
    ],
)  # fmt: skip
def test_each_bad_value_is_named_with_what_was_given(dotted, value, named):
    with pytest.raises(ParameterError) as raised:
        check_parameters(with_value(configured_parameters(), dotted, value))
    assert any(named in problem for problem in raised.value.problems), raised.value.problems
    assert "nothing was run" in raised.value.message


#: Each choice the schema offers, and the constant of the code that acts on it.
CHOICES_IN_CODE = {
    "preprocessing.input_mode": layout.INPUT_MODES,
    "preprocessing.stain_normalisation": layout.STAIN_NORMALISATIONS,
    "preprocessing.segmentation.channel_order": layout.CHANNEL_ORDERS,
    "augmentation.transforms.fill_mode": choices.FILL_MODES,
    "model.input_scaling": choices.INPUT_SCALINGS,
    "training.mode": layout.TRAINING_MODES,
    "training.batch_size": (choices.AUTO_BATCH_SIZE,),
    "training.learning_rate_scaling": choices.LEARNING_RATE_SCALINGS,
    "training.cache_at": choices.VGG16_LAYERS,
    "training.class_weight": choices.CLASS_WEIGHTS,
    "training.feature_dtype": choices.FEATURE_DTYPES,
    "training.feature_batch_size": (choices.AUTO_BATCH_SIZE,),
    "training.mixed_precision": choices.MIXED_PRECISION,
    "training.distribution": layout.DISTRIBUTIONS,
    "evaluation.tta": choices.TTA_MODES,
}


def literal_choices(model: type[BaseModel], prefix: str = "") -> dict[str, tuple]:
    """Every field of the schema that takes one of a list of words, by its dotted name, with the words."""
    found: dict[str, tuple] = {}

    def visit(name: str, annotation: object) -> None:
        if get_origin(annotation) is Literal:
            found[name] = found.get(name, ()) + get_args(annotation)
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.update(literal_choices(annotation, f"{name}."))
        else:
            for inner in get_args(annotation):
                visit(name, inner)

    for field, info in model.model_fields.items():
        visit(f"{prefix}{field}", info.annotation)
    return found


def test_each_choice_list_is_the_code_s_own():
    """The schema offers exactly the words the code acts on, taken from the constant the code defines."""
    schema = {
        name: words for name, words in literal_choices(parameters.Parameters).items() if "_input." not in name
    }
    assert schema == {name: tuple(words) for name, words in CHOICES_IN_CODE.items()}
    fine_tune = parameters.Training.model_fields["fine_tune_blocks"].metadata
    assert max(bound.le for bound in fine_tune if hasattr(bound, "le")) == choices.VGG16_BLOCKS


def test_no_choice_list_is_spelt_again_in_the_package():
    """No module but the one defining a choice list writes the same words out as a literal list."""
    package = Path(parameters.__file__).parent
    spelt = {frozenset(words): name for name, words in CHOICES_IN_CODE.items() if len(words) > 1}
    homes = {frozenset(getattr(module, constant)): Path(module.__file__) for module, constant in (
        (layout, "INPUT_MODES"), (layout, "STAIN_NORMALISATIONS"), (layout, "TRAINING_MODES"),
        (layout, "DISTRIBUTIONS"), (layout, "CHANNEL_ORDERS"), (choices, "FILL_MODES"),
        (choices, "INPUT_SCALINGS"), (choices, "LEARNING_RATE_SCALINGS"), (choices, "CLASS_WEIGHTS"),
        (choices, "FEATURE_DTYPES"), (choices, "MIXED_PRECISION"), (choices, "TTA_MODES"),
    )}  # fmt: skip
    again = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Tuple | ast.List | ast.Set) and len(node.elts) > 1:
                words = [element.value for element in node.elts if isinstance(element, ast.Constant)]
                if (
                    len(words) == len(node.elts)
                    and frozenset(words) in spelt
                    and path != homes[frozenset(words)]
                ):
                    again.append(f"{path.relative_to(package)}:{node.lineno} {spelt[frozenset(words)]}")
    assert not again, again


def test_a_multiplier_below_one_for_one_class_is_named():
    parameters = with_value(configured_parameters(), "augmentation.multiplier.Pro", 0.5)
    with pytest.raises(ParameterError, match=r"augmentation\.multiplier\.Pro = 0\.5"):
        check_parameters(parameters)


def sources(parameters: dict, project: Path) -> DataCatalog:
    """The catalog's image folders and model where `parameters` say they are, as conf makes them."""
    return DataCatalog(
        {
            "raw_images": ImageFolderDataset(parameters["dataset"]["root"]),
            "inference_images": ImageFolderDataset(parameters["inference"]["input_dir"]),
            "model": KerasModelDataset(
                str(project / "data/06_models/model.keras"), parameters["inference"]["model_uri"]
            ),
        }
    )


def test_the_folders_and_files_a_pipeline_uses_are_checked_before_it_runs(tmp_path: Path):
    parameters = with_value(configured_parameters(), "dataset.root", str(tmp_path / "missing"))
    parameters = with_value(parameters, "model.base_weights", str(tmp_path / "missing.h5"))
    parameters = with_value(parameters, "inference.input_dir", str(tmp_path / "nothing"))
    catalog = sources(parameters, tmp_path)
    everything = ingestion.create_pipeline() + training.create_pipeline() + inference.create_pipeline()
    with pytest.raises(ParameterError) as raised:
        check_sources(parameters, everything, catalog, tmp_path)
    assert [problem.split(" = ")[0] for problem in raised.value.problems] == [
        "dataset.root", "inference.input_dir", "model.base_weights",
    ]  # fmt: skip
    # Inference alone needs its folder and a model: the trained file, or an MLflow model instead.
    with pytest.raises(ParameterError) as raised:
        check_sources(parameters, inference.create_pipeline(), catalog, tmp_path)
    assert [problem.split(" = ")[0][:19] for problem in raised.value.problems] == [
        "inference.input_dir", "no trained model at",
    ]  # fmt: skip
    (tmp_path / "nothing").mkdir()
    scoring = with_value(parameters, "inference.model_uri", "models:/all_detection@champion")
    check_sources(scoring, inference.create_pipeline(), sources(scoring, tmp_path), tmp_path)
    # ...which a run that trains its own model refuses.
    with pytest.raises(ParameterError, match=r"model_uri = 'models:/all_detection@champion': this run"):
        check_sources(scoring, training.create_pipeline(), sources(scoring, tmp_path), tmp_path)
    # The demo writes its own dataset into a new folder, and falls back to a random base without weights.
    demo_run = with_value(parameters, "model.random_weights_fallback", True)
    demo_run = with_value(demo_run, "demo", {"synthetic_dataset": {"per_class": 2}})
    check_sources(with_value(demo_run, "dataset.synthetic", True), demo.create_pipeline(), catalog, tmp_path)
    # ...only in the demo environment: a synthetic set its reports would call real is refused.
    with pytest.raises(ParameterError, match=r"only the demo environment.*kedro run --env demo"):
        check_sources(demo_run, demo.create_pipeline(), catalog, tmp_path)


def test_a_folder_set_in_the_parameters_but_not_the_catalog_is_refused(tmp_path: Path):
    """dataset.root lives in globals.yml, which the catalog and the parameters both read: set in a
    parameters file alone, the catalog would read another folder than the one MLflow records."""
    (tmp_path / "ALL").mkdir()
    parameters = with_value(configured_parameters(), "dataset.root", str(tmp_path / "ALL"))
    catalog = sources(with_value(parameters, "dataset.root", "data/01_raw/ALL"), tmp_path)
    with pytest.raises(ParameterError, match=r"the catalog's raw_images reads '.*data/01_raw/ALL'.*globals"):
        check_sources(parameters, ingestion.create_pipeline(), catalog, tmp_path)
    check_sources(parameters, ingestion.create_pipeline(), sources(parameters, tmp_path), tmp_path)


@pytest.mark.slow  # a Kedro session on a copy of the project
def test_a_run_with_a_bad_parameter_stops_before_any_node_or_mlflow_run(project_copy: Path):
    with pytest.raises(ParameterError, match=r"split\.test_fraction = 1\.5"):
        run_session(project_copy, split={"test_fraction": 1.5})
    assert not (project_copy / "data" / "02_intermediate").exists()
    client = mlflow.MlflowClient(f"sqlite:///{project_copy / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("all_detection")
    assert experiment is None or not client.search_runs([experiment.experiment_id])


@pytest.mark.slow  # a Kedro session on a copy of the project
def test_a_missing_weights_file_stops_the_run_before_ingestion(project_copy: Path, tmp_path: Path):
    weights = {"base_weights": str(tmp_path / "x.h5"), "random_weights_fallback": False}
    with pytest.raises(ParameterError, match=r"model\.base_weights"):
        run_session(project_copy, pipeline="__default__", env="demo", model=weights)
    assert not (project_copy / "data" / "02_intermediate").exists()


@pytest.mark.slow  # a Kedro session on a copy of the project
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
