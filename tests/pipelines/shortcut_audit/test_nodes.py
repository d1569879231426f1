"""The shortcut audit on synthetic fields where the class is told by colour, by shape, or by both: a model
that reads only colour fails the stain swap and one that reads only shape passes it; null models are at
chance when colour carries no label; the same seed gives the same audit."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import keras
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from all_detection.core.model import assemble_classifier, build_base, build_feature_extractor, build_head
from all_detection.core.prediction import predict_probabilities
from all_detection.image_io import ImageFolder
from all_detection.layout import CLASSES, PROBABILITY_COLUMNS, whole_images
from all_detection.offline import run_in_process
from all_detection.pipelines import shortcut_audit
from all_detection.pipelines.shortcut_audit.nodes import (
    COUNTERFACTUALS,
    choose_audit_sample,
    fit_null_models,
    model_inputs,
    plot_shortcut_audit,
    score_counterfactuals,
    shortcut_audit_mlflow_metrics,
)
from tests.configuration import configured_parameters

SIZE = 48
SEED = 42
PARAMETERS = configured_parameters()
PREPROCESSING = {**PARAMETERS["preprocessing"], "image_size": SIZE}
AUDIT = {**PARAMETERS["shortcut_audit"], "images_per_class": 6}
EVALUATION = {**PARAMETERS["evaluation"], "bootstrap_samples": 200}
INGESTION = PARAMETERS["ingestion"]
# Each class's stain (how much of R, G and B it absorbs) and the radius of its cell, in pixels at 48.
STAINS = np.array([[0.15, 0.55, 0.2], [0.45, 0.35, 0.05], [0.55, 0.5, 0.0], [0.05, 0.3, 0.55]])
RADII = (4, 7, 10, 13)


def field(stain: np.ndarray, radius: int, rng: np.random.Generator) -> np.ndarray:
    """A bright field tinted by `stain` with one dark cell of `radius` somewhere in it."""
    light = 255 * (1 - 0.12 * stain)
    rgb = np.empty((SIZE, SIZE, 3), np.float32)
    rgb[:] = light
    centre = rng.integers(radius + 2, SIZE - radius - 2, 2)
    cell = np.zeros((SIZE, SIZE), np.uint8)
    cv2.circle(cell, (int(centre[0]), int(centre[1])), radius, 1, -1)
    rgb[cell > 0] = 255 * (1 - 0.7 * stain)
    return np.clip(rgb + rng.normal(0, 2, rgb.shape), 0, 255).round().astype(np.uint8)


def write_split(root: Path, split: str, per_class: int, by_class: bool, seed: int) -> pd.DataFrame:
    """Fields of each class written as PNG (lossless) in the Kaggle layout, and their split index. The
    cell's stain and size follow the class (`by_class`) or are drawn at random, label-independent."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, label in enumerate(CLASSES):
        for number in range(per_class):
            look = k if by_class else rng.integers(len(CLASSES))
            path = f"Original/{label}/{split}-{number:02d}.png"
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(field(STAINS[look], RADII[look], rng)).save(root / path)
            rows.append(
                {"image_id": path, "label": label, "label_index": k, "group": len(rows), "split": split}
            )
    return pd.DataFrame(rows)


class MeanColourClassifier(keras.layers.Layer):
    """Reads only colour: the class whose mean training colour is nearest the image's mean colour."""

    def __init__(self, centroids: np.ndarray, **kwargs):
        super().__init__(**kwargs)
        self.centroids = keras.ops.convert_to_tensor(centroids, "float32")

    def call(self, images):
        mean = keras.ops.mean(keras.ops.cast(images, "float32"), axis=(1, 2))
        distance = keras.ops.sum((mean[:, None, :] - self.centroids[None]) ** 2, axis=-1)
        return keras.ops.softmax(-distance / 10.0)


class DarkAreaClassifier(keras.layers.Layer):
    """Reads only shape: the share of pixels much darker than the image's own mean (the cell's area),
    measured in grey standardised per image, so no colour or brightness reaches it."""

    def __init__(self, areas: np.ndarray, **kwargs):
        super().__init__(**kwargs)
        self.areas = keras.ops.convert_to_tensor(areas, "float32")

    def call(self, images):
        grey = keras.ops.mean(keras.ops.cast(images, "float32"), axis=-1)
        mean = keras.ops.mean(grey, axis=(1, 2), keepdims=True)
        spread = keras.ops.std(grey, axis=(1, 2), keepdims=True) + 1e-6
        area = keras.ops.mean(keras.ops.cast((grey - mean) / spread < -1.0, "float32"), axis=(1, 2))
        return keras.ops.softmax(-((area[:, None] - self.areas[None]) ** 2) / 1e-4)


def model_of(layer: keras.layers.Layer) -> keras.Model:
    images = keras.Input((SIZE, SIZE, 3))
    return keras.Model(images, layer(images))


@pytest.fixture(scope="module")
def fields(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Fields whose class is told by both colour and cell size, as on the ALL dataset's batches."""
    root = tmp_path_factory.mktemp("fields")
    train = write_split(root, "train", 6, by_class=True, seed=1)
    test = write_split(root, "test", 6, by_class=True, seed=2)
    return {"root": root, "raw": ImageFolder(root), "train": train, "test": test}


def predictions(model: keras.Model, raw: ImageFolder, index: pd.DataFrame) -> pd.DataFrame:
    """The evaluation's test predictions, as `predict_split` writes them."""
    smears = [raw.read_rgb(path, INGESTION) for path in index["image_id"]]
    probabilities = predict_probabilities(model, model_inputs(smears, PREPROCESSING), 8)
    predicted = probabilities.argmax(axis=1)
    frame = index[["image_id", "label", "label_index"]].assign(predicted_index=predicted)
    return pd.concat([frame, pd.DataFrame(probabilities, columns=PROBABILITY_COLUMNS)], axis=1)


def audit_of(model: keras.Model, fields: dict) -> dict:
    chosen = choose_audit_sample(fields["test"], AUDIT, SEED)
    unchanged = predictions(model, fields["raw"], fields["test"])
    return score_counterfactuals(model, chosen, unchanged, fields["raw"], AUDIT, PREPROCESSING, INGESTION,
                                 EVALUATION, SEED)  # fmt: skip


def training_stack(fields: dict) -> np.ndarray:
    return model_inputs([fields["raw"].read_rgb(path, INGESTION) for path in fields["train"]["image_id"]],
                        PREPROCESSING)  # fmt: skip


def test_a_model_that_reads_only_colour_fails_the_stain_swap(fields: dict):
    stack, labels = training_stack(fields), fields["train"]["label_index"].to_numpy()
    centroids = np.stack([stack[labels == k].mean(axis=(0, 1, 2)) for k in range(len(CLASSES))])
    audit = audit_of(model_of(MeanColourClassifier(centroids)), fields)
    assert audit["unchanged"]["accuracy"] == 1.0
    assert audit["stain_swap"]["accuracy"] <= 0.25
    assert audit["stain_swap"]["follows_donor"] >= 0.75
    assert audit["grey_levels"]["accuracy"] <= 0.5
    assert audit["stain_swap"]["drop"] >= 0.75


def test_a_model_that_reads_only_shape_passes_the_stain_swap(fields: dict):
    stack, labels = training_stack(fields), fields["train"]["label_index"].to_numpy()
    grey = stack.mean(axis=-1)
    standardised = (grey - grey.mean(axis=(1, 2), keepdims=True)) / grey.std(axis=(1, 2), keepdims=True)
    area = (standardised < -1.0).mean(axis=(1, 2))
    areas = np.array([area[labels == k].mean() for k in range(len(CLASSES))])
    audit = audit_of(model_of(DarkAreaClassifier(areas)), fields)
    assert audit["unchanged"]["accuracy"] == 1.0
    for name in ("pooled_stain", "stain_swap", "corners_painted", "grey_levels"):
        assert audit[name]["accuracy"] >= 0.9, name
    assert audit["stain_swap"]["follows_donor"] <= 0.1
    assert set(audit) == {"images", "images_per_class", "unchanged", *COUNTERFACTUALS}
    assert audit["images"] == 4 * AUDIT["images_per_class"]


def test_null_models_are_at_chance_when_colour_carries_no_label(tmp_path: Path):
    train = write_split(tmp_path, "train", 20, by_class=False, seed=3)
    test = write_split(tmp_path, "test", 20, by_class=False, seed=4)
    nulls = fit_null_models(
        train, test, ImageFolder(tmp_path), AUDIT, PREPROCESSING, INGESTION, EVALUATION, SEED
    )
    for name, block in nulls.items():
        assert block["accuracy"] <= 0.45, name
        assert block["interval"][0] <= 0.25 + 0.05, name
        assert block["trained_on"] == 80 and block["n"] == 80


def test_null_models_see_colour_when_colour_tells_the_class(fields: dict):
    nulls = fit_null_models(fields["train"], fields["test"], fields["raw"], AUDIT, PREPROCESSING, INGESTION,
                            EVALUATION, SEED)  # fmt: skip
    assert nulls["colour_statistics"]["accuracy"] == 1.0
    assert nulls["colour_statistics"]["classifier"] == "LogisticRegression"
    assert nulls["colour_statistics"]["features"] == 42


def test_the_audit_skips_augmented_views_and_draws_a_balanced_seeded_subset():
    index = pd.DataFrame(
        {
            "image_id": [f"Original/{CLASSES[k % 4]}/{k}.jpg#{view}" for k in range(12) for view in (0, 1)],
            "source_id": [f"Original/{CLASSES[k % 4]}/{k}.jpg" for k in range(12) for _ in (0, 1)],
            "view": [0, 1] * 12,
            "label": [CLASSES[k % 4] for k in range(12) for _ in (0, 1)],
            "label_index": [k % 4 for k in range(12) for _ in (0, 1)],
        }
    )
    whole = whole_images(index)
    assert len(whole) == 12 and not whole["path"].str.contains("#").any()
    chosen = choose_audit_sample(index, {"images_per_class": 2}, SEED)
    assert chosen["label"].value_counts().to_dict() == dict.fromkeys(CLASSES, 2)
    assert chosen.equals(choose_audit_sample(index, {"images_per_class": 2}, SEED))
    assert (index["view"].to_numpy()[chosen["row"]] == 0).all()


@pytest.mark.slow  # the audit pipeline as wired, run twice
def test_the_whole_audit_is_the_same_for_the_same_seed(fields: dict):
    """The audit pipeline as `kedro run` wires it, twice, on a tiny randomly initialised classifier."""
    base, _ = build_base(SIZE, None)
    extractor = build_feature_extractor(base, 3, PARAMETERS["model"]["input_scaling"])
    model = assemble_classifier(
        extractor, build_head(extractor.output_shape[1:], PARAMETERS["model"]["head"])
    )
    unchanged = predictions(model, fields["raw"], fields["test"])
    data = {"model": model, "raw_images": fields["raw"], "train_index": fields["train"],
            "test_index": fields["test"], "test_predictions": unchanged}  # fmt: skip
    parameters = {
        **PARAMETERS,
        "preprocessing": PREPROCESSING,
        "shortcut_audit": AUDIT,
        "evaluation": EVALUATION,
    }
    pipeline = shortcut_audit.create_pipeline().to_outputs("shortcut_audit")
    audit = run_in_process(pipeline, parameters, data)["shortcut_audit"]
    again = run_in_process(pipeline, parameters, data)["shortcut_audit"]
    assert json.dumps(audit, allow_nan=False) == json.dumps(again)
    assert set(audit) == {"test_images", "chance", "null_models", "counterfactuals", "attention", "settings"}
    assert audit["chance"]["majority_class"] == 0.25 and audit["settings"]["seed"] == SEED
    if keras.backend.backend() == "tensorflow":
        shares = audit["attention"]["all"]["share"]
        if shares["blast_mask"] is not None:
            assert sum(shares.values()) == pytest.approx(1.0, abs=1e-4)
    metrics = shortcut_audit_mlflow_metrics(audit)
    swap = audit["counterfactuals"]["stain_swap"]["accuracy"]
    assert metrics["audit_stain_swap_accuracy"] == {"value": swap, "step": 0}
    assert metrics["audit_null_colour_statistics_accuracy"]["value"] == audit["null_models"][
        "colour_statistics"]["accuracy"]  # fmt: skip
    figure = plot_shortcut_audit(audit)
    assert isinstance(figure, Figure)
    plt.close(figure)
