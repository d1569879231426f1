"""The paper's augment-then-split protocol and the comparison report, on tiny arrays."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from all_detection.core.stain import stain_reference
from all_detection.layout import CLASSES
from all_detection.pipelines.evaluation.report import measure_leakage
from all_detection.studies.protocol_comparison.nodes import (
    accuracy_by_view,
    augment_then_split,
    compare_protocols,
    comparison_mlflow_metrics,
    plot_protocol_comparison,
)
from tests.configuration import configured_parameters

PARAMETERS = configured_parameters()
SPLIT = {"test_fraction": 0.2, "val_fraction": 0.1, "seed": 7}


def stack(split: str, per_class: int, offset: int) -> tuple[np.ndarray, pd.DataFrame]:
    """`per_class` flat 8x8 images of each class, each a distinct grey level so views can be traced."""
    labels = np.repeat(CLASSES, per_class)
    ids = [f"Original/{label}/{split}-{k}.jpg" for k, label in enumerate(labels)]
    images = np.stack([np.full((8, 8, 3), offset + k, dtype=np.uint8) for k in range(len(labels))])
    index = pd.DataFrame(
        {
            "image_id": ids,
            "label": labels,
            "label_index": [CLASSES.index(label) for label in labels],
            "group": [f"group-{image_id}" for image_id in ids],
            "split": split,
        }
    )
    return images, index


@pytest.fixture(scope="module")
def paper_split() -> tuple:
    parts = [stack("train", 7, 0), stack("val", 1, 100), stack("test", 2, 150)]
    inputs = [item for part in parts for item in part]
    return inputs, augment_then_split(*inputs, stain_reference(inputs[0]), PARAMETERS["augmentation"], SPLIT)


def test_every_image_is_augmented_before_the_views_are_split_at_random(paper_split: tuple):
    inputs, (train, train_index, val, val_index, test, test_index) = paper_split
    indices = pd.concat([train_index, val_index, test_index], ignore_index=True)
    # All 40 images, each with the training split's views (by default its 8 exact symmetries), the
    # source among them as view 0.
    assert PARAMETERS["augmentation"]["dihedral_views"]
    assert len(indices) == 4 * 10 * 8 == len(train) + len(val) + len(test)
    assert indices["view_id"].is_unique and (indices["image_id"] == indices["view_id"]).all()
    sources = {*inputs[1]["image_id"], *inputs[3]["image_id"], *inputs[5]["image_id"]}
    assert set(indices["source_id"]) == sources
    # Split over views, stratified by class, in the fractions asked of images.
    assert len(test) == pytest.approx(0.2 * len(indices), abs=4)
    assert len(val) == pytest.approx(0.1 * len(indices), abs=4)
    assert (test_index["label"].value_counts() >= 3).all()
    # Views of one image on both sides of the split: the leakage the paper's protocol has.
    leakage = measure_leakage(train_index, val_index, test_index)
    assert leakage["test"]["fraction_same_source"] > 0.5
    # Each view's pixels come from its source (view 0 unchanged), in the index's row order.
    source_images = {
        image_id: image
        for images, index in zip(inputs[::2], inputs[1::2], strict=True)
        for image_id, image in zip(index["image_id"], images, strict=True)
    }
    unchanged = np.flatnonzero(test_index["view"] == 0)
    assert len(unchanged) > 0
    for row in unchanged:
        np.testing.assert_array_equal(test[row], source_images[test_index["source_id"].iloc[row]])


def test_the_paper_split_is_seeded(paper_split: tuple):
    inputs, first = paper_split
    again = augment_then_split(*inputs, stain_reference(inputs[0]), PARAMETERS["augmentation"], SPLIT)
    for one, other in zip(first, again, strict=True):
        if isinstance(one, pd.DataFrame):
            pd.testing.assert_frame_equal(one, other)
        else:
            np.testing.assert_array_equal(one, other)


def metrics(accuracy: float, macro_f1: float, leaked: float, n: int) -> dict:
    block = {
        "n": n,
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "confidence_intervals": {
            "accuracy": [accuracy - 0.1, accuracy + 0.05],
            "macro_f1": [macro_f1 - 0.1, 1.0],
        },
    }
    return {
        "test": block,
        "val": {**block, "n": n // 2},
        "run": {
            "split_sizes": {"train": 30, "train_views": 120, "val": n // 2, "test": n},
            "leakage": {"test": {"fraction_same_source": leaked}, "val": {"fraction_same_source": leaked}},
        },
    }


def predictions(image_ids: list[str], correct: list[bool]) -> pd.DataFrame:
    return pd.DataFrame({"image_id": image_ids, "correct": correct})


PAPER_VIEWS = pd.DataFrame({"image_id": ["a#0", "a#1", "b#2", "c#0"], "view": [0, 1, 2, 0]})
IMAGES = pd.DataFrame({"image_id": ["x.jpg", "y.jpg"]})


def test_accuracy_is_split_between_unaugmented_images_and_random_views():
    paper = accuracy_by_view(
        predictions(["a#0", "a#1", "b#2", "c#0"], [True, False, True, True]), PAPER_VIEWS
    )
    assert paper == {"unaugmented": {"n": 2, "accuracy": 1.0}, "augmented": {"n": 2, "accuracy": 0.5}}
    untouched = accuracy_by_view(predictions(["x.jpg", "y.jpg"], [True, False]), IMAGES)
    assert untouched == {"unaugmented": {"n": 2, "accuracy": 0.5}, "augmented": {"n": 0, "accuracy": None}}


def test_the_comparison_holds_both_protocols_and_the_paper_s_excess():
    comparison = compare_protocols(
        metrics(0.99, 0.98, 0.97, 700),
        predictions(["a#0", "a#1", "b#2", "c#0"], [True, True, True, False]),
        PAPER_VIEWS,
        metrics(0.9, 0.88, 0.0, 160),
        predictions(["x.jpg", "y.jpg"], [True, True]),
        IMAGES,
    )
    assert set(comparison["protocols"]) == {"paper", "leakage_free"}
    paper = comparison["protocols"]["paper"]
    assert paper["test"] == {
        "n": 700,
        "accuracy": 0.99,
        "accuracy_ci": [0.89, 1.04],
        "macro_f1": 0.98,
        "macro_f1_ci": [0.88, 1.0],
    }
    assert "augmented" in paper["description"] and paper["leakage"]["test"]["fraction_same_source"] == 0.97
    assert paper["test_accuracy_by_view"]["unaugmented"] == {"n": 2, "accuracy": 0.5}
    excess = comparison["paper_minus_leakage_free"]
    assert excess["test_accuracy"] == pytest.approx(0.09)
    assert excess["test_macro_f1"] == pytest.approx(0.10)
    assert excess["test_accuracy_unaugmented"] == pytest.approx(-0.5)

    flat = comparison_mlflow_metrics(comparison)
    assert flat["paper_test_accuracy"] == {"value": 0.99, "step": 0}
    assert flat["leakage_free_test_leaked_fraction"] == {"value": 0.0, "step": 0}
    assert flat["paper_minus_leakage_free_test_accuracy"]["value"] == pytest.approx(0.09)
    assert flat["paper_test_accuracy_augmented"] == {"value": 1.0, "step": 0}
    assert "leakage_free_test_accuracy_augmented" not in flat  # no views to score

    figure = plot_protocol_comparison(comparison)
    assert isinstance(figure, Figure)
    plt.close(figure)
