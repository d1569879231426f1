"""What the reproduction studies share: one model run (training and evaluation) repeated per protocol,
fold or input mode without copying a node, the headline numbers of each, and their MLflow records.

A study is a list of variants: each is the project's own pipelines under a namespace (`paper`,
`fold_2`, `masked_input`), its datasets saved by the catalog's `{run}.*` patterns, its parameters the
project's except those it overrides in conf. So a change to training or evaluation reaches every study,
and kedro-viz shows each variant as one box.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from kedro.pipeline import Node, Pipeline
from matplotlib.figure import Figure

from all_detection.pipelines import evaluation, shortcut_audit, training

# A study's report reads its runs' outputs by the names Kedro's namespacing gives them ("paper.metrics"),
# which Kedro warns about whenever a node outside the namespace names one.
warnings.filterwarnings("ignore", message="One or more dataset names contain '.'", category=UserWarning)

# The numbers each study compares, with their bootstrap intervals from metrics.json.
HEADLINE_METRICS = ("accuracy", "macro_f1")


def model_run() -> Pipeline:
    """Training, evaluation and the shortcut audit as `kedro run` wires them, less the model
    registration (a study trains several models for comparison, none of which is the project's model
    of record), plus the run's record for its MLflow child run. A variant reads the image folder
    (`raw_images`, for the audit) as it is: list it among the variant's `shared` inputs. The run's
    reports go to its MLflow child run, so kedro-viz draws none of them around the variant's box."""
    trained = training.create_pipeline()
    record = Node(
        mlflow_run,
        inputs=[
            "metrics",
            "shortcut_audit",
            "evaluation_metrics",
            "shortcut_audit_metrics",
            "model_card",
            "classification_report",
        ],
        outputs="mlflow_run",
        name="mlflow_run_node",
    )
    evaluated = evaluation.create_pipeline()
    unregistered = trained - trained.only_nodes_with_tags("registration")
    unranked = evaluated - evaluated.only_nodes_with_tags("registration")
    return unregistered + unranked + shortcut_audit.create_pipeline() + Pipeline([record])


def variant(
    pipeline: Pipeline,
    namespace: str,
    shared: Iterable[str] = (),
    renamed: Mapping[str, str] | None = None,
    overridden: Iterable[str] = (),
) -> Pipeline:
    """One variant of a study: `pipeline` with its datasets prefixed `<namespace>.`, except the `shared`
    inputs (read as they are) and the `renamed` ones (read from another dataset); those the pipeline
    does not read (the training mode decides which images it reads) are left out. Parameters stay
    shared, but for the `overridden` ones, which the variant reads from `params:<namespace>.<name>`
    (`params:masked_input.preprocessing`): its settings in conf, usually the shared ones with a change
    (see conf/base/parameters_input_mode_comparison.yml). The variant's figures (`*_figure`,
    `*_examples`) are gathered into one dataset, `<namespace>.figures` (`figures_by_file`)."""
    overridden = set(overridden)
    figures = sorted(name for name in pipeline.outputs() if name.endswith(FIGURE_SUFFIXES))
    if figures:
        pipeline += Pipeline(
            [
                Node(
                    figures_by_file,
                    inputs={name: name for name in figures},
                    outputs="figures",
                    name="gather_figures_node",
                )
            ]
        )
    parameters = {name for name in pipeline.inputs() if name.startswith("params:")} - overridden
    inputs = {name: name for name in shared} | dict(renamed or {})
    inputs = {name: source for name, source in inputs.items() if name in pipeline.inputs()}
    return Pipeline(pipeline, namespace=namespace, inputs=inputs, parameters=parameters)


#: How the stages name the figures they draw (`confusion_matrix_figure`, `augmentation_examples`).
FIGURE_SUFFIXES = ("_figure", "_examples")


def figures_by_file(**figures: Figure) -> dict[str, Figure]:
    """A variant's figures as one folder of PNG files, each named as a `kedro run` names it
    (`confusion_matrix.png`, `augmentation_examples.png`)."""
    return {f"{name.removesuffix('_figure')}.png": figure for name, figure in figures.items()}


def pooled_index(
    train_index: pd.DataFrame, val_index: pd.DataFrame, test_index: pd.DataFrame
) -> pd.DataFrame:
    """Every usable image's index row: the training, validation and test splits' rows, in that order,
    the order `pooled_images` stacks their pixels in."""
    return pd.concat([train_index, val_index, test_index], ignore_index=True)


def pooled_images(train_images: np.ndarray, val_images: np.ndarray, test_images: np.ndarray) -> np.ndarray:
    """Every usable image in one in-memory stack, in `pooled_index`'s order."""
    return np.concatenate([np.asarray(images) for images in (train_images, val_images, test_images)])


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
    metrics: dict[str, Any],
    shortcut_audit: dict[str, Any],
    evaluation_metrics: dict[str, Any],
    shortcut_audit_metrics: dict[str, Any],
    model_card: str,
    classification_report: str,
) -> dict[str, Any]:
    """One study run as an MLflow child run: metrics.json's `run` block as parameters (`split_sizes.test`,
    `leakage.test.fraction_same_source`...), the final, per-epoch and audit metrics under the names a
    `kedro run` logs (so runs of every kind line up in the UI), metrics.json and shortcut_audit.json."""
    flat = pd.json_normalize(metrics["run"], sep=".").iloc[0].to_dict()
    return {
        "params": {name: value for name, value in flat.items() if value is not None},
        "metrics": {**evaluation_metrics, **shortcut_audit_metrics},
        "reports": {
            "metrics.json": metrics,
            "shortcut_audit.json": shortcut_audit,
            "model_card.md": model_card,
            "classification_report.txt": classification_report,
        },
    }


def child_runs(**runs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The study's runs by name, for `MlflowChildRunsDataset`."""
    return runs


def child_runs_node(namespaces: Mapping[str, str], output: str) -> Node:
    """The node that gathers each variant's MLflow record (`<namespace>.mlflow_run`) under its run's
    name (`namespaces`: run name to namespace) into the study's `MlflowChildRunsDataset` `output`."""
    return Node(
        child_runs,
        inputs={name: f"{namespace}.mlflow_run" for name, namespace in namespaces.items()},
        outputs=output,
        name=f"{output}_node",
    )


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
