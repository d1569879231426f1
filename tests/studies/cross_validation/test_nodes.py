"""Fold assignment and the summary across folds; the folds' training runs in tests/test_studies_run.py."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from all_detection.layout import CLASSES
from all_detection.studies.cross_validation.nodes import (
    assign_folds,
    cross_validation_mlflow_metrics,
    fold_splits,
    plot_folds,
    split_fold,
    summarise_folds,
)
from all_detection.studies.cross_validation.pipeline import create_pipeline
from tests.configuration import session_configuration


def index(split: str, per_class: int) -> pd.DataFrame:
    labels = np.repeat(CLASSES, per_class)
    ids = [f"Original/{label}/{split}-{k}.jpg" for k, label in enumerate(labels)]
    # Every third image shares its group with the next one (a near duplicate pair).
    groups = [f"g-{split}-{k - (k % 3 == 1)}" for k in range(len(ids))]
    return pd.DataFrame(
        {
            "image_id": ids,
            "label": labels,
            "label_index": [CLASSES.index(label) for label in labels],
            "group": groups,
            "split": split,
        }
    )


SPLITS = (index("train", 14), index("val", 2), index("test", 4))


def test_each_image_is_tested_once_in_a_stratified_fold_that_keeps_groups_whole():
    folds = assign_folds(*SPLITS, {"folds": 5}, 42)
    pooled = pd.concat(SPLITS, ignore_index=True)
    assert folds["image_id"].tolist() == pooled["image_id"].tolist()  # the stacks' order, kept
    assert sorted(folds["fold"].unique()) == [1, 2, 3, 4, 5]
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    per_class = folds.groupby(["fold", "label"]).size().unstack()
    assert per_class.notna().all().all() and (per_class >= 3).all().all() and (per_class <= 5).all().all()
    assert "split" not in folds
    pd.testing.assert_frame_equal(folds, assign_folds(*SPLITS, {"folds": 5}, 42))
    assert not folds["fold"].equals(assign_folds(*SPLITS, {"folds": 5}, 7)["fold"])


def test_each_fold_tests_its_own_images_and_holds_out_validation_images_from_the_rest():
    folds = assign_folds(*SPLITS, {"folds": 4}, 42)
    assignments = fold_splits(folds, {"val_fraction": 0.1, "seed": 42})
    assert len(assignments) == 4
    tested = pd.concat([assigned[assigned["split"] == "test"] for assigned in assignments])
    assert sorted(tested["image_id"]) == sorted(folds["image_id"])  # each image tested exactly once
    for fold, assigned in enumerate(assignments, start=1):
        assert assigned["image_id"].tolist() == folds["image_id"].tolist()
        assert ((assigned["split"] == "test") == (assigned["fold"] == fold)).all()
        assert 4 <= (assigned["split"] == "val").sum() <= 12  # about a tenth of all 80 images
        assert (assigned.groupby("group")["split"].nunique() == 1).all()  # groups whole


def test_a_fold_s_stacks_hold_its_rows_in_the_pooled_order():
    images = [np.arange(len(split), dtype=np.uint8)[:, None, None, None] + offset
              for split, offset in zip(SPLITS, (0, 100, 200), strict=True)]  # fmt: skip
    assigned = fold_splits(assign_folds(*SPLITS, {"folds": 4}, 42), {"val_fraction": 0.1, "seed": 42})[1]
    stacks = split_fold(*images, assigned)
    pooled = np.concatenate(images)
    for number, name in enumerate(("train", "val", "test")):
        stack, split_index = stacks[2 * number], stacks[2 * number + 1]
        rows = np.flatnonzero(assigned["split"] == name)
        assert np.array_equal(stack, pooled[rows]) and split_index["split"].eq(name).all()
        assert split_index["image_id"].tolist() == assigned["image_id"].iloc[rows].tolist()
    with pytest.raises(ValueError, match="rows in the fold's split"):
        split_fold(*images, assigned.iloc[:-1])


def test_the_pipeline_has_one_namespace_per_configured_fold():
    # A session with --params cross_validation.folds=3 registers three folds.
    with session_configuration(cross_validation={"folds": 3}):
        pipeline = create_pipeline()
    namespaces = {node.namespace for node in pipeline.nodes if node.namespace}
    assert namespaces == {"fold_1", "fold_2", "fold_3"}
    assert {"fold_1.metrics", "fold_3.model_card", "fold_2.confusion_matrix_figure"} <= pipeline.all_outputs()
    with session_configuration():  # the project's conf
        configured = create_pipeline()
    assert {node.namespace for node in configured.nodes if node.namespace} == {
        f"fold_{fold}" for fold in range(1, 6)
    }


@pytest.mark.parametrize("folds", [1, 15])
def test_fold_counts_the_smallest_class_cannot_fill_are_refused(folds: int):
    with pytest.raises(ValueError, match=r"cross_validation\.folds must be at least 2"):
        assign_folds(*SPLITS, {"folds": folds}, 42)


def fold_metrics(accuracy: float, macro_f1: float) -> dict:
    block = {"n": 20, "accuracy": accuracy, "macro_f1": macro_f1, "confidence_intervals": {}}
    return {"test": block, "val": block, "run": {"split_sizes": {"train": 60, "val": 8, "test": 20}}}


def test_the_summary_gives_each_fold_and_the_mean_and_sample_sd_across_folds():
    summary = summarise_folds(
        fold_1=fold_metrics(0.5, 0.4), fold_2=fold_metrics(0.7, 0.6), fold_3=fold_metrics(0.9, 0.5)
    )
    assert summary["k"] == 3 and list(summary["folds"]) == ["fold_1", "fold_2", "fold_3"]
    assert summary["folds"]["fold_2"]["test"]["accuracy"] == 0.7
    assert summary["across_folds"]["test_accuracy"] == {"mean": 0.7, "std": 0.2, "min": 0.5, "max": 0.9}
    assert summary["across_folds"]["test_macro_f1"]["std"] == pytest.approx(0.1)

    flat = cross_validation_mlflow_metrics(summary)
    assert flat["cv_test_accuracy_mean"] == {"value": 0.7, "step": 0}
    assert flat["cv_test_accuracy_std"] == {"value": 0.2, "step": 0}
    assert flat["cv_fold_test_accuracy"] == [
        {"value": 0.5, "step": 1},
        {"value": 0.7, "step": 2},
        {"value": 0.9, "step": 3},
    ]
    figure = plot_folds(summary)
    assert isinstance(figure, Figure) and "0.700 ± 0.200" in figure.axes[0].get_title()
    plt.close(figure)
