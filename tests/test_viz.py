"""The pipeline graph as a person opens it in kedro-viz, read from the JSON that `kedro viz build` and
`kedro viz run --save-file` write (`kedro viz build` takes no --env): layers in the data folders'
order, each study a few boxes, and the demo's node in the demo environment only."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.projects import PROJECT_ROOT, copy_project

# The data folders, in their order: each dataset's layer is its folder's name.
FOLDERS = ["01_raw", "02_intermediate", "03_primary", "04_feature", "05_model_input", "06_models"]
FOLDERS += ["07_model_output", "08_reporting"]
# The one dataset whose layer is not its folder (conf/base/catalog.yml says why).
LAYER_NOT_ITS_FOLDER = {"data_quality": "02_intermediate"}
STUDIES = ("protocol_comparison", "cross_validation", "input_mode_comparison")
# A study reads as a few boxes: at most this many datasets of a model's own drawn around its box (its
# figures, metrics, MLflow record, cached test features; the paper's protocol adds the test index and
# predictions its report reads). Before the reports were gathered: 13 to 20.
DATASETS_AROUND_A_BOX = 6
KEDRO = Path(sys.executable).parent / "kedro"


def catalog_entries() -> dict[str, dict[str, Any]]:
    entries = yaml.safe_load((PROJECT_ROOT / "conf/base/catalog.yml").read_text())
    return {name: entry for name, entry in entries.items() if not name.startswith("_")}


def test_each_dataset_s_layer_is_its_data_folder():
    wrong = {}
    for name, entry in catalog_entries().items():
        layer = (entry.get("metadata") or {}).get("kedro-viz", {}).get("layer")
        filepath = entry.get("filepath") or (entry.get("dataset") or {}).get("filepath")
        folder = re.match(r"data/(\d\d_\w+)/", filepath or "")
        expected = LAYER_NOT_ITS_FOLDER.get(name, folder and folder[1])
        if (layer or expected) and (layer not in FOLDERS or (expected and layer != expected)):
            wrong[name] = (filepath, layer)
    assert not wrong


def run_in(project: Path, command: list[str]) -> str:
    """`command` run in `project` as a user's shell would (no KEDRO_ENV): what it printed, once it has
    succeeded."""
    shell = {name: value for name, value in os.environ.items() if name != "KEDRO_ENV"}
    done = subprocess.run(
        command, cwd=project, env=shell, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """`kedro viz build` in a fresh copy of the project, outside the demo environment: the folder of
    its JSON and what it printed."""
    project = copy_project(tmp_path_factory.mktemp("viz") / "project")
    printed = run_in(project, [str(KEDRO), "viz", "build"])
    yield project / "build/api", printed


def graph(api: Path, pipeline: str) -> dict[str, Any]:
    return json.loads((api / "pipelines" / pipeline).read_text())


def layers_used(graph: dict[str, Any]) -> list[str]:
    """The layers of the pipeline's own datasets, in the order kedro-viz draws them (its `layers` list
    also holds those of other pipelines' datasets, unconnected, wherever a tie puts them)."""
    own = {node["layer"] for node in graph["nodes"] if node.get("layer")}
    return [layer for layer in graph["layers"] if layer in own]


def datasets_around_boxes(graph: dict[str, Any]) -> dict[str, int]:
    """For each collapsed box of the top-level view, the datasets drawn around it: its inputs and
    outputs among the top level's nodes (parameters are hidden by default)."""
    nodes = {node["id"]: node for node in graph["nodes"]}
    tree = graph["modular_pipelines"]
    top = {child["id"] for child in tree["__root__"]["children"]}
    return {
        box: sum(
            1
            for dataset in {*tree[box]["inputs"], *tree[box]["outputs"]}
            if dataset in top and nodes[dataset]["type"] == "data"
        )
        for box in top
        if box in tree
    }


def own_datasets_around_boxes(graph: dict[str, Any]) -> dict[str, int]:
    """For each collapsed box of the top-level view, the datasets of its own namespace drawn around it
    (`fold_1.metrics`, `fold_1.figures`...)."""
    nodes = {node["id"]: node for node in graph["nodes"]}
    top = [nodes[child["id"]] for child in graph["modular_pipelines"]["__root__"]["children"]]
    boxes = [node["name"] for node in top if node["type"] == "modularPipeline"]
    return {
        box: sum(1 for node in top if node["type"] == "data" and node["name"].startswith(f"{box}."))
        for box in boxes
    }


@pytest.mark.slow
def test_the_default_pipeline_s_layers_are_the_data_folders_in_order(built):
    api, _ = built
    default = graph(api, "__default__")
    assert default["layers"] == [folder for folder in FOLDERS if folder != "05_model_input"]
    assert layers_used(default) == sorted(layers_used(default))


@pytest.mark.slow
def test_the_inference_pipeline_draws_the_images_above_the_model(built):
    api, _ = built
    layers = layers_used(graph(api, "inference"))
    assert layers == ["01_raw", "06_models", "07_model_output"]


@pytest.mark.slow
@pytest.mark.parametrize("study", STUDIES)
def test_each_study_keeps_its_layers_and_a_box_per_model(built, study: str):
    api, _ = built
    study_graph = graph(api, study)
    assert layers_used(study_graph) == sorted(layers_used(study_graph)), study
    assert datasets_around_boxes(study_graph)


@pytest.mark.slow
@pytest.mark.parametrize("study", STUDIES)
def test_each_study_reads_as_a_few_boxes(built, study: str):
    """Each model of a study is one box with a few datasets of its own around it (its figures and
    reports gathered: kedro-viz draws every dataset no node reads), not a row of 13 to 20 each."""
    api, _ = built
    own = own_datasets_around_boxes(graph(api, study))
    assert len(own) >= 2, own
    assert max(own.values()) <= DATASETS_AROUND_A_BOX, own


@pytest.mark.slow
def test_outside_the_demo_no_demo_node_and_no_missing_parameter(built):
    api, printed = built
    site = json.loads((api / "main").read_text())
    assert "demo" not in {pipeline["id"] for pipeline in site["pipelines"]}
    assert not [node for node in graph(api, "__default__")["nodes"] if "demo" in node["tags"]]
    assert "Cannot find parameter" not in printed


# What `kedro viz run --env demo --save-file viz` does before it starts its web server.
VIZ_RUN_SAVES = """
import sys
from pathlib import Path

import fsspec
from kedro_viz.api.rest.responses.save_responses import save_api_responses_to_fs
from kedro_viz.server import load_and_populate_data

load_and_populate_data(Path.cwd(), env=sys.argv[1])
save_api_responses_to_fs("viz", fsspec.filesystem("file"), False)
"""


@pytest.mark.slow
def test_kedro_viz_run_with_env_demo_shows_the_demo_node(tmp_path: Path):
    """`kedro viz run --env demo` (kedro-viz runs no hook) registers the pipelines of the demo
    environment: the demo's node comes first in the default pipeline."""
    project = copy_project(tmp_path / "project")
    run_in(project, [sys.executable, "-c", VIZ_RUN_SAVES, "demo"])
    api = project / "viz/api"
    site = json.loads((api / "main").read_text())
    assert "demo" in {pipeline["id"] for pipeline in site["pipelines"]}
    demo_nodes = [node for node in graph(api, "__default__")["nodes"] if "demo" in node["tags"]]
    assert any(node["type"] == "task" for node in demo_nodes)
