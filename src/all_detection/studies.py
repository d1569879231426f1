"""What the reproduction studies share: one model run (training and evaluation) repeated per protocol,
fold or input mode without copying a node, the headline numbers of each, and their MLflow records.

Each study pipeline (`protocol_comparison`, `cross_validation`, `input_mode_comparison`) is made of the
project's own pipelines, namespaced, so a change to training or evaluation reaches every study.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline
from kedro.runner import SequentialRunner
from matplotlib.figure import Figure

from all_detection.pipelines import evaluation, training

# A study's report reads its runs' outputs by the names Kedro's namespacing gives them ("paper.metrics"),
# which Kedro warns about whenever a node outside the namespace names one.
warnings.filterwarnings("ignore", message="One or more dataset names contain '.'", category=UserWarning)

# The numbers each study compares, with their bootstrap intervals from metrics.json.
HEADLINE_METRICS = ("accuracy", "macro_f1")


def model_run() -> Pipeline:
    """Training and evaluation as `kedro run` wires them, less the model registration (a study trains
    several models for comparison, none of which is the project's model of record), plus the run's
    record for its MLflow child run."""
    trained = training.create_pipeline()
    record = Node(
        mlflow_run,
        inputs=["metrics", "evaluation_metrics", "training_history_metrics"],
        outputs="mlflow_run",
        name="mlflow_run_node",
    )
    evaluated = evaluation.create_pipeline()
    unregistered = trained - trained.only_nodes_with_tags("registration")
    unranked = evaluated - evaluated.only_nodes_with_tags("registration")
    return unregistered + unranked + Pipeline([record])


def namespaced(
    pipeline: Pipeline, namespace: str, shared: Iterable[str] = (), renamed: Mapping[str, str] | None = None
) -> Pipeline:
    """`pipeline` with its datasets prefixed `<namespace>.`, except the `shared` inputs (read as they
    are) and the `renamed` ones (read from another dataset). Parameters stay shared: every run of a
    study uses the same settings, but for what the study varies through its datasets."""
    parameters = {name for name in pipeline.inputs() if name.startswith("params:")}
    inputs = {name: name for name in shared} | dict(renamed or {})
    return Pipeline(pipeline, namespace=namespace, inputs=inputs, parameters=parameters)


def reading(pipeline: Pipeline, parameter: str, dataset: str) -> Pipeline:
    """The same nodes, each reading `dataset` wherever it read the parameter `parameter`.

    Kedro maps parameters only to other parameters; a study that varies one setting per run (the
    input mode) computes the run's settings as a dataset and has the nodes read that instead.
    """
    return Pipeline(
        [
            Node(
                node.func,
                inputs=[dataset if name == parameter else name for name in node.inputs],
                # A node declared with one output returns the value itself, not a one-item list.
                outputs=node.outputs if len(node.outputs) > 1 else node.outputs[0],
                name=node.name,
                tags=node.tags,
            )
            for node in pipeline.nodes
        ]
    )


def pooled_index(
    train_index: pd.DataFrame, val_index: pd.DataFrame, test_index: pd.DataFrame
) -> pd.DataFrame:
    """Every usable image's index row: the training, validation and test splits' rows, in that order,
    the order `pooled_images` stacks their pixels in."""
    return pd.concat([train_index, val_index, test_index], ignore_index=True)


def pooled_images(train_images: np.ndarray, val_images: np.ndarray, test_images: np.ndarray) -> np.ndarray:
    """Every usable image in one in-memory stack, in `pooled_index`'s order."""
    return np.concatenate([np.asarray(images) for images in (train_images, val_images, test_images)])


def parameter_value(parameters: dict[str, Any], name: str) -> Any:
    """The value of a `params:a.b` input in the nested parameters dictionary."""
    value: Any = parameters
    for key in name.removeprefix("params:").split("."):
        value = value[key]
    return value


class _KeptDataset(MemoryDataset):
    """A memory dataset the runner cannot empty: holds an output the caller asked for past the run."""

    def _release(self) -> None:
        pass


def run_in_memory(
    pipeline: Pipeline, inputs: dict[str, Any], parameters: dict[str, Any], outputs: Iterable[str]
) -> dict[str, Any]:
    """Run the part of `pipeline` that makes `outputs` on in-memory data, and return those outputs.

    Inputs come from `inputs` or, for `params:` names, from `parameters`. Every dataset is held by
    reference (no copies of image stacks or models) and released once no node needs it. No hooks run:
    this run records nothing in MLflow itself; the calling node's outputs do.
    """
    wanted = set(outputs)
    pipeline = pipeline.to_outputs(*wanted)
    catalog = DataCatalog(
        {
            name: (_KeptDataset if name in wanted else MemoryDataset)(copy_mode="assign")
            for name in pipeline.datasets()
        }
    )
    for name in pipeline.inputs():
        catalog[name].save(parameter_value(parameters, name) if name.startswith("params:") else inputs[name])
    SequentialRunner().run(pipeline, catalog)
    return {name: catalog[name].load() for name in sorted(wanted)}


def headline(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Accuracy and macro F1 of the test and validation splits of a metrics.json, with their intervals."""
    summary = {}
    for split in ("test", "val"):
        block = metrics.get(split) or {}
        intervals = block.get("confidence_intervals") or {}
        summary[split] = {"n": block.get("n", 0)}
        for name in HEADLINE_METRICS:
            summary[split][name] = block.get(name)
            summary[split][f"{name}_ci"] = intervals.get(name)
    return summary


def mlflow_run(
    metrics: dict[str, Any], evaluation_metrics: dict[str, Any], training_history_metrics: dict[str, Any]
) -> dict[str, Any]:
    """One study run as an MLflow child run: metrics.json's `run` block as parameters (`split_sizes.test`,
    `leakage.test.fraction_same_source`...), the final and per-epoch metrics under the names a `kedro run`
    logs (so runs of every kind line up in the UI), and metrics.json itself."""
    flat = pd.json_normalize(metrics["run"], sep=".").iloc[0].to_dict()
    return {
        "params": {name: value for name, value in flat.items() if value is not None},
        "metrics": {**evaluation_metrics, **training_history_metrics},
        "reports": {"metrics.json": metrics},
    }


def child_runs(**runs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The study's runs by name, for `MlflowChildRunsDataset`."""
    return runs


def plot_interval_comparison(summaries: dict[str, dict[str, Any]], title: str, split: str = "test") -> Figure:
    """Accuracy and macro F1 of each run on `split` as bars with their bootstrap intervals, and under
    each run's name the number of images its numbers rest on."""
    names = list(summaries)
    figure, ax = plt.subplots(figsize=(2.2 + 1.6 * len(names), 3.6))
    width = 0.8 / len(HEADLINE_METRICS)
    for offset, metric in enumerate(HEADLINE_METRICS):
        values = np.array([summaries[name][split][metric] or 0.0 for name in names])
        intervals = [summaries[name][split][f"{metric}_ci"] or [None, None] for name in names]
        low = np.array([values[k] - (pair[0] if pair[0] is not None else values[k]) for k, pair in
                        enumerate(intervals)])  # fmt: skip
        high = np.array([(pair[1] if pair[1] is not None else values[k]) - values[k] for k, pair in
                         enumerate(intervals)])  # fmt: skip
        positions = np.arange(len(names)) + (offset - (len(HEADLINE_METRICS) - 1) / 2) * width
        bars = ax.bar(positions, values, width, yerr=[low, high], capsize=4,
                      label=metric.replace("_", " "))  # fmt: skip
        ax.bar_label(bars, labels=[f"{value:.3f}" for value in values], label_type="center", fontsize=7)
    ticks = [f"{name.replace('_', ' ')}\nn = {summaries[name][split].get('n', '?')}" for name in names]
    ax.set_xticks(np.arange(len(names)), ticks)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(f"{split} score")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure
