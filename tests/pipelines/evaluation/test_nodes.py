"""Evaluation: metrics and their report on hand-made predictions with a known confusion matrix, the
model card, and prediction, Grad-CAM and figures on a tiny randomly initialised model at 32 px."""

from __future__ import annotations

import json
import math

import jinja2
import keras
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from all_detection.core.model import assemble_classifier, build_base, build_feature_extractor, build_head
from all_detection.gradcam import gradcam_heatmaps
from all_detection.layout import CLASSES, PROBABILITY_COLUMNS
from all_detection.metrics import bootstrap_intervals, expected_calibration_error, one_vs_rest_auc
from all_detection.model_card import model_card_context, write_model_card
from all_detection.pipelines.evaluation import figures
from all_detection.pipelines.evaluation.figures import (
    plot_confusion_matrix,
    plot_gradcam,
    plot_misclassified,
    plot_reliability_diagram,
    plot_roc_curves,
    plot_training_curves,
)
from all_detection.pipelines.evaluation.nodes import evaluate_split, predict_split
from all_detection.pipelines.evaluation.report import (
    assemble_metrics,
    history_to_mlflow_metrics,
    measure_leakage,
    split_mlflow_metrics,
    to_mlflow_metrics,
    write_classification_report,
)
from tests.configuration import configured_parameters

EVALUATION = {**configured_parameters()["evaluation"], "bootstrap_samples": 200}
MODEL = configured_parameters()["model"]
SEED = 42
SIZE = 32

# Rows are true classes, columns predicted classes (Benign, Early, Pre, Pro); 10 images per class.
CONFUSION = np.array(
    [
        [8, 1, 1, 0],
        [1, 7, 2, 0],
        [0, 1, 8, 1],
        [0, 0, 1, 9],
    ]
)


def predictions_from(confusion: np.ndarray, confidence: float = 0.7) -> pd.DataFrame:
    """A prediction frame with exactly this confusion matrix: the predicted class gets `confidence`, the
    other classes share the rest equally."""
    truth, predicted = [], []
    for true_class, row in enumerate(confusion):
        for predicted_class, count in enumerate(row):
            truth += [true_class] * int(count)
            predicted += [predicted_class] * int(count)
    truth, predicted = np.array(truth), np.array(predicted)
    probabilities = np.full((len(truth), len(CLASSES)), (1 - confidence) / (len(CLASSES) - 1))
    probabilities[np.arange(len(truth)), predicted] = confidence
    frame = pd.DataFrame(
        {
            "image_id": [f"image_{number}.jpg" for number in range(len(truth))],
            "label": [CLASSES[k] for k in truth],
            "label_index": truth,
            "predicted": [CLASSES[k] for k in predicted],
            "predicted_index": predicted,
            "confidence": probabilities.max(axis=1),
            "correct": truth == predicted,
        }
    )
    return pd.concat([frame, pd.DataFrame(probabilities, columns=PROBABILITY_COLUMNS)], axis=1)


@pytest.fixture(scope="module")
def known() -> dict:
    return evaluate_split(predictions_from(CONFUSION), EVALUATION, SEED)


def card_of(*inputs: dict) -> str:
    """The card as the pipeline makes it: the context node, then the template."""
    return write_model_card(model_card_context(*inputs))


def test_accuracy_and_per_class_scores_match_the_hand_computed_confusion_matrix(known: dict):
    assert known["n"] == 40
    assert known["accuracy"] == pytest.approx(32 / 40)
    assert known["confusion_matrix"]["labels"] == list(CLASSES)
    assert known["confusion_matrix"]["counts"] == CONFUSION.tolist()
    assert known["confusion_matrix"]["normalized"][1] == pytest.approx([0.1, 0.7, 0.2, 0.0])
    # Precision = diagonal / column sum (9, 9, 12, 10); recall = diagonal / 10; specificity = TN / 30.
    expected = {
        "Benign": (8 / 9, 0.8, 16 / 19, 29 / 30),
        "Early": (7 / 9, 0.7, 14 / 19, 28 / 30),
        "Pre": (8 / 12, 0.8, 16 / 22, 26 / 30),
        "Pro": (9 / 10, 0.9, 18 / 20, 29 / 30),
    }
    for label, (precision, recall, f1, specificity) in expected.items():
        scores = known["per_class"][label]
        assert scores["precision"] == pytest.approx(precision, abs=1e-6)
        assert scores["recall"] == pytest.approx(recall, abs=1e-6)
        assert scores["f1"] == pytest.approx(f1, abs=1e-6)
        assert scores["specificity"] == pytest.approx(specificity, abs=1e-6)
        assert scores["support"] == 10
    assert known["macro_f1"] == pytest.approx(np.mean([row[2] for row in expected.values()]), abs=1e-6)
    # Every class has 10 images, so the weighted mean is the plain mean.
    assert known["weighted_f1"] == pytest.approx(known["macro_f1"], abs=1e-6)


def test_kappa_and_mcc_match_their_formulas(known: dict):
    predicted_counts, true_counts, n, correct = CONFUSION.sum(axis=0), CONFUSION.sum(axis=1), 40, 32
    chance = (predicted_counts * true_counts).sum() / n**2  # 400 / 1600
    assert known["cohen_kappa"] == pytest.approx((0.8 - chance) / (1 - chance), abs=1e-6)
    assert known["cohen_kappa"] == pytest.approx(0.55 / 0.75, abs=1e-6)
    mcc = (correct * n - (predicted_counts * true_counts).sum()) / math.sqrt(
        (n**2 - (predicted_counts**2).sum()) * (n**2 - (true_counts**2).sum())
    )
    assert known["mcc"] == pytest.approx(mcc, abs=1e-6)
    assert known["mcc"] == pytest.approx(880 / math.sqrt(1194 * 1200), abs=1e-6)


def test_detection_is_benign_against_any_malignant_stage(known: dict):
    # Benign row: 8 kept benign, 2 called malignant; malignant rows: only one Early called Benign.
    detection = known["detection"]
    assert (detection["tp"], detection["fn"], detection["tn"], detection["fp"]) == (29, 1, 8, 2)
    assert detection["sensitivity"] == pytest.approx(29 / 30, abs=1e-6)
    assert detection["specificity"] == pytest.approx(8 / 10, abs=1e-6)
    assert "malignant" in detection["positive"]


def test_expected_calibration_error_on_hand_made_cases(known: dict):
    confidence = np.full(10, 0.8)
    assert expected_calibration_error(confidence, np.arange(10) < 8, 15) == pytest.approx(0.0)
    assert expected_calibration_error(confidence, np.arange(10) < 5, 15) == pytest.approx(0.3)
    # Two bins: 0.9 confident and always right (gap 0.1), 0.3 confident and never right (gap 0.3).
    mixed = np.array([0.9] * 6 + [0.3] * 4)
    assert expected_calibration_error(mixed, np.arange(10) < 6, 10) == pytest.approx(0.6 * 0.1 + 0.4 * 0.3)
    # Every prediction 0.7 confident, 80% right.
    assert known["ece"] == pytest.approx(0.1, abs=1e-6)


def test_bootstrap_interval_contains_the_estimate_is_seeded_and_narrows_with_more_images(known: dict):
    intervals = known["confidence_intervals"]
    assert intervals["level"] == 0.95 and intervals["bootstrap_samples"] == 200
    low, high = intervals["accuracy"]
    assert low <= known["accuracy"] <= high and low < high
    low, high = intervals["macro_f1"]
    assert low <= known["macro_f1"] <= high

    frame = predictions_from(CONFUSION)
    truth, predicted = frame["label_index"].to_numpy(), frame["predicted_index"].to_numpy()
    first = bootstrap_intervals(truth, predicted, 200, 0.95, SEED)
    assert first == bootstrap_intervals(truth, predicted, 200, 0.95, SEED)
    assert first != bootstrap_intervals(truth, predicted, 200, 0.95, SEED + 1)
    tenfold = bootstrap_intervals(np.tile(truth, 10), np.tile(predicted, 10), 200, 0.95, SEED)
    assert np.diff(tenfold["accuracy"])[0] < np.diff(first["accuracy"])[0] / 2
    assert tenfold["accuracy"][0] <= 0.8 <= tenfold["accuracy"][1]


def test_roc_auc_is_one_for_perfectly_ranked_probabilities(known: dict):
    truth = np.repeat(np.arange(len(CLASSES)), 5)
    probabilities = np.full((len(truth), len(CLASSES)), 0.1)
    probabilities[np.arange(len(truth)), truth] = 0.7
    assert one_vs_rest_auc(truth, probabilities) == dict.fromkeys([*CLASSES, "macro"], 1.0)
    assert all(0.5 < value <= 1.0 for value in known["roc_auc"].values())


def test_a_class_absent_from_the_split_gives_null_not_nan():
    without_pro = CONFUSION.copy()
    without_pro[3] = 0
    metrics = evaluate_split(predictions_from(without_pro), EVALUATION, SEED)
    assert metrics["n"] == 30
    assert metrics["roc_auc"]["Pro"] is None
    assert metrics["roc_auc"]["macro"] == pytest.approx(
        np.mean([metrics["roc_auc"][label] for label in ("Benign", "Early", "Pre")]), abs=1e-6
    )
    assert metrics["per_class"]["Pro"]["support"] == 0
    assert metrics["per_class"]["Pro"]["recall"] is None
    assert metrics["confusion_matrix"]["normalized"][3] == [0.0, 0.0, 0.0, 0.0]
    json.dumps(metrics, allow_nan=False)

    only_benign = evaluate_split(predictions_from(np.diag([5, 0, 0, 0])), EVALUATION, SEED)
    assert only_benign["accuracy"] == 1.0
    assert only_benign["cohen_kappa"] is None
    assert only_benign["detection"]["sensitivity"] is None
    assert only_benign["detection"]["specificity"] == 1.0
    assert all(value is None for value in only_benign["roc_auc"].values())
    flat = split_mlflow_metrics(only_benign, "test")
    assert "test_kappa" not in flat and "test_roc_auc_macro" not in flat
    assert flat["test_accuracy"] == {"value": 1.0, "step": 0}


SUMMARY = {
    "mode": "cached",
    "device": "CPU (2 cores)",
    "base_weights": {"requested": "imagenet", "used": "None", "warning": "Could not download. Falling back."},
    "epochs_run": 7,
    "best_epoch": 3,
    "cache_at": "block5_pool",
    "fine_tuned_layers": [],
    "class_weight": "none",
}
DATA_QUALITY = {
    "dataset_root": "data/01_raw/demo_ALL",
    "synthetic": True,
    "files": {"total": 81, "ok": 80, "quarantined": 1},
    "images_per_class_and_split": {
        label: {"train": 7, "val": 1, "test": 2, "total": 10} for label in CLASSES
    },
    "split": {"requested": {"test_fraction": 0.2, "val_fraction": 0.1}, "seed": SEED},
    "quarantined": {"by_reason": {"unreadable image": 1}},
    "duplicates": {"exact_groups": 1, "near_groups": 2},
    "segmentation_agreement": {"Pro": {"dice_mean": 0.37}},
}


def _block(accuracy: float, interval: list[float], **extra) -> dict:
    return {"accuracy": accuracy, "interval": interval, "recall": dict.fromkeys(CLASSES, accuracy), "n": 40,
            **extra}  # fmt: skip


# A shortcut audit as shortcut_audit.json holds it: a colour detector as good as the model, and a model
# that loses 0.3 under another class's stain, half its answers then naming the stain's class.
AUDIT = {
    "test_images": 40,
    "chance": {"majority_class": 0.25},
    "null_models": {
        "colour_statistics": _block(0.9, [0.8, 0.97], cue="global colour", classifier="LogisticRegression"),
        "corner_patches": _block(
            0.5, [0.35, 0.65], cue="corners", classifier="HistGradientBoostingClassifier"
        ),
        "thumbnail": _block(0.6, [0.45, 0.75], cue="thumbnail", classifier="HistGradientBoostingClassifier"),
    },
    "counterfactuals": {
        "images": 40,
        "images_per_class": 10,
        "unchanged": _block(0.8, [0.675, 0.925]),
        "pooled_stain": _block(0.75, [0.6, 0.875], change="one stain", drop=0.05),
        "stain_swap": _block(0.5, [0.35, 0.65], change="another class's stain", drop=0.3, follows_donor=0.45),
        "corners_painted": _block(0.8, [0.675, 0.925], change="corners painted", drop=0.0),
        "background_flattened": _block(0.7, [0.55, 0.85], change="background flat", drop=0.1),
        "grey_levels": _block(0.4, [0.25, 0.55], change="grey", drop=0.4),
    },
    "attention": {
        "available": True,
        "all": {
            "share": {"blast_mask": 0.62, "corners": 0.03, "elsewhere": 0.35},
            "area": {"blast_mask": 0.2, "corners": 0.08, "elsewhere": 0.72},
            "n": 40,
            "explained": 40,
        },
        "per_class": {},
    },
    "settings": {"images_per_class": 10, "seed": SEED},
}


def split_index(image_ids: list[str], groups: list[str], **columns: list) -> pd.DataFrame:
    return pd.DataFrame({"image_id": image_ids, "group": groups, **columns})


TRAIN_INDEX = split_index([f"train/{k}.jpg" for k in range(28)], [f"g{k}" for k in range(28)])
VIEW_INDEX = pd.DataFrame(
    {
        "source_id": np.repeat(TRAIN_INDEX["image_id"].to_numpy(), 4),
        "group": np.repeat(TRAIN_INDEX["group"].to_numpy(), 4),
    }
)
NO_LEAKAGE = measure_leakage(
    VIEW_INDEX,
    split_index([f"val/{k}.jpg" for k in range(4)], [f"v{k}" for k in range(4)]),
    split_index([f"test/{k}.jpg" for k in range(40)], [f"t{k}" for k in range(40)]),
)


@pytest.fixture(scope="module")
def metrics(known: dict) -> dict:
    val = evaluate_split(predictions_from(np.diag([1, 1, 1, 1])), EVALUATION, SEED)
    preprocessing = {"input_mode": "original", "image_size": 96, "stain_normalisation": "reinhard"}
    return assemble_metrics(
        val,
        known,
        SUMMARY,
        TRAIN_INDEX,
        VIEW_INDEX,
        NO_LEAKAGE,
        preprocessing,
        {"balance": False},
        "dihedral",
    )


def test_leakage_counts_held_out_images_whose_source_or_group_was_trained_on():
    assert NO_LEAKAGE["test"] == {
        "n": 40,
        "same_source_in_training": 0,
        "same_group_in_training": 0,
        "fraction_same_source": 0.0,
        "fraction_same_group": 0.0,
    }
    # Views split after augmentation (the paper's protocol): a test view names its source image.
    test_views = split_index(
        ["train/0.jpg#1", "train/1.jpg#2", "other.jpg#1", "near.jpg#0"],
        ["g0", "g1", "x", "g5"],
        source_id=["train/0.jpg", "train/1.jpg", "other.jpg", "near.jpg"],
    )
    leakage = measure_leakage(VIEW_INDEX, test_views.head(0), test_views)
    assert leakage["test"]["same_source_in_training"] == 2
    assert leakage["test"]["same_group_in_training"] == 3  # near.jpg is a near copy of train/5.jpg
    assert leakage["test"]["fraction_same_source"] == 0.5
    assert leakage["val"] == {
        "n": 0,
        "same_source_in_training": 0,
        "same_group_in_training": 0,
        "fraction_same_source": None,
        "fraction_same_group": None,
    }


def test_metrics_follow_the_contract_and_are_valid_json(metrics: dict):
    assert list(metrics) == ["test", "val", "run"]
    for key in ("accuracy", "macro_f1", "per_class", "roc_auc", "ece", "confidence_intervals", "detection"):
        assert key in metrics["test"] and key in metrics["val"]
    assert metrics["run"] == {
        "mode": "cached",
        "epochs_run": 7,
        "best_epoch": 3,
        "base_weights": "None",
        "device": "CPU (2 cores)",
        "input_mode": "original",
        "image_size": 96,
        "recipe": {
            "cache_at": "block5_pool",
            "fine_tuned_layers": [],
            "class_weight": "none",
            "balanced_augmentation": False,
            "stain_normalisation": "reinhard",
            "tta": "dihedral",
        },
        "split_sizes": {"train": 28, "train_views": 112, "val": 4, "test": 40},
        "leakage": NO_LEAKAGE,
    }
    assert json.loads(json.dumps(metrics, allow_nan=False)) == metrics


def test_mlflow_metrics_are_flat_finite_and_stably_named(metrics: dict):
    flat = {
        **split_mlflow_metrics(metrics["test"], "test"),
        **split_mlflow_metrics(metrics["val"], "validation"),
    }
    for name in ("accuracy", "macro_f1", "weighted_f1", "kappa", "mcc", "roc_auc_macro", "ece", "sensitivity",
                 "specificity", "accuracy_ci_low", "accuracy_ci_high", "f1_Benign", "f1_Pro"):  # fmt: skip
        assert f"test_{name}" in flat and f"validation_{name}" in flat
    assert flat["test_accuracy"] == {"value": pytest.approx(0.8), "step": 0}
    assert all(set(item) == {"value", "step"} and item["step"] == 0 for item in flat.values())
    assert all(isinstance(item["value"], float) and math.isfinite(item["value"]) for item in flat.values())


def test_history_metrics_have_one_step_per_epoch():
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3, 4],
            "phase": ["head", "head", "head", "fine_tune"],
            "loss": [1.2, 0.8, 0.6, 0.5],
            "accuracy": [0.4, 0.6, 0.7, 0.75],
            "val_loss": [1.3, 0.9, 0.8, 0.7],
            "val_accuracy": [0.35, 0.55, 0.6, 0.65],
            "learning_rate": [1e-3, 1e-3, 1e-3, 1e-5],
            "epoch_seconds": [2.0, 1.5, 1.4, 3.0],
        }
    )
    metrics = history_to_mlflow_metrics(history)
    # What was measured on training views says so: never a bare `accuracy` beside the test accuracy.
    assert set(metrics) == {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "train_learning_rate",
                            "train_epoch_seconds"}  # fmt: skip
    for entries in metrics.values():
        assert [entry["step"] for entry in entries] == [1, 2, 3, 4]
    assert metrics["val_accuracy"][2] == {"value": 0.6, "step": 3}
    assert metrics["train_accuracy"][3] == {"value": 0.75, "step": 4}
    # The run's page lists metrics as first logged: the test split's lead, the history comes last.
    logged = list(to_mlflow_metrics({"accuracy": 0.9, "n": 4}, {"accuracy": 0.8, "n": 2}, history))
    assert logged[:2] == ["test_accuracy", "validation_accuracy"] and logged[-1] == "train_epoch_seconds"
    figure = plot_training_curves(history)
    assert isinstance(figure, Figure)
    plt.close(figure)


def test_model_card_states_protocol_intervals_and_limitations(metrics: dict):
    card = card_of(metrics, SUMMARY, DATA_QUALITY, AUDIT, MODEL)
    low, high = metrics["test"]["confidence_intervals"]["accuracy"]
    assert "not a diagnostic device" in card
    assert "10.34740/KAGGLE/DSV/2175623" in card and "Aria" in card
    assert "before augmentation" in card and "kept together" in card and "Stratified" in card
    assert "seed 42" in card and "test 0.2" in card
    assert f"{low:.3f} to {high:.3f}" in card and "95%" in card
    assert "patient" in card.lower() and "no patient ids" in card
    assert "quarantined: 1" in card
    # Files count Originals and Segmented copies; the usable images are the split table's 40 Originals.
    assert "Files found: 81" in card and "Usable images (Originals, the unit of the split): 40." in card
    assert "Falling back" in card  # the base weights' fallback warning
    assert "Synthetic data" in card  # the demo set, as its parameters say
    # A folder's name does not make data synthetic: a real set under a "demo" folder is not called one.
    assert "Synthetic data" not in card_of(
        metrics, SUMMARY, {**DATA_QUALITY, "synthetic": False, "dataset_root": "/labs/demo_ALL"}, AUDIT, MODEL
    )
    assert "Leaky protocol" not in card
    # The recipe: this run's VGG16 was frozen, and its predictions averaged over the 8 dihedral views.
    assert "**Frozen**" in card and "`dihedral`" in card and "loss weights `none`" in card


def test_model_card_names_the_fine_tuned_layers(metrics: dict):
    recipe = {**metrics["run"]["recipe"], "cache_at": "block5_conv2", "fine_tuned_layers": ["block5_conv3"]}
    card = card_of(
        {**metrics, "run": {**metrics["run"], "recipe": recipe}}, SUMMARY, DATA_QUALITY, AUDIT, MODEL
    )
    assert "**Fine-tuned**" in card and "block5_conv3 trained with it" in card and "`block5_conv2`" in card


def test_model_card_says_so_when_test_images_leaked_into_training(metrics: dict):
    leaked = {"test": {"same_source_in_training": 30, "fraction_same_source": 0.75}}
    run = {**metrics["run"], "leakage": leaked}
    card = card_of({**metrics, "run": run}, SUMMARY, DATA_QUALITY, AUDIT, MODEL)
    assert "Leaky protocol" in card and "30 of the 40 test images (75.0%)" in card
    assert "before augmentation" not in card


def test_model_card_says_what_the_model_relies_on(metrics: dict):
    card = card_of(metrics, SUMMARY, DATA_QUALITY, AUDIT, MODEL)
    relies = card[card.index("## What this model relies on") : card.index("## Limitations")]
    # The model's 0.800 [0.675, ...] is not clear of a colour detector's 0.900 [..., 0.97]: said so.
    assert "reaches 0.900 on the same test images, against the model's 0.800" in relies
    assert "cannot show that it reads the cells' morphology" in relies
    assert "scores 0.500 (0.300 below the same smears unchanged)" in relies and "45.0%" in relies
    assert "62% of its Grad-CAM evidence lies on the stained cells" in relies
    assert "| colour statistics | global colour | 0.900 | 0.800 to 0.970 |" in relies
    assert "| stain swap | another class's stain | 0.500 | 0.350 to 0.650 | 0.300 |" in relies
    # A model clear of every null model by both intervals is said to be.
    strong = {**metrics, "test": {**metrics["test"], "accuracy": 0.99,
                                  "confidence_intervals": {**metrics["test"]["confidence_intervals"],
                                                           "accuracy": [0.98, 1.0]}}}  # fmt: skip
    assert "above it by more than both intervals" in card_of(strong, SUMMARY, DATA_QUALITY, AUDIT, MODEL)
    # Without Grad-CAM (another backend) the card says why.
    blind = {**AUDIT, "attention": {"available": False, "reason": "Grad-CAM needs the TensorFlow backend"}}
    assert "not measured (Grad-CAM needs the TensorFlow backend)" in card_of(
        metrics, SUMMARY, DATA_QUALITY, blind, MODEL
    )


def test_classification_report_has_test_then_validation():
    report = write_classification_report(predictions_from(np.diag([1, 1, 1, 1])), predictions_from(CONFUSION))
    assert report.index("Test split") < report.index("Validation split")
    assert "Benign" in report and "macro avg" in report


@pytest.fixture(scope="module")
def tiny_models() -> dict[int, object]:
    """Randomly initialised classifiers at 32 px, RGB and dual (6-channel)."""
    models = {}
    for channels in (3, 6):
        base, _ = build_base(SIZE, None)
        extractor = build_feature_extractor(base, channels, MODEL["input_scaling"])
        head = build_head(extractor.output_shape[1:], MODEL["head"])
        models[channels] = assemble_classifier(extractor, head)
    return models


@pytest.fixture(scope="module")
def tiny_split() -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(SEED)
    images = rng.integers(0, 256, (10, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.arange(10) % len(CLASSES)
    index = pd.DataFrame(
        {
            "image_id": [f"Original/{CLASSES[k]}/{number}.jpg" for number, k in enumerate(labels)],
            "label": [CLASSES[k] for k in labels],
            "label_index": labels,
            "group": np.arange(10),
            "split": "test",
        }
    )
    return images, index


def test_predict_split_gives_probabilities_and_their_argmax(tiny_models: dict, tiny_split: tuple):
    images, index = tiny_split
    predictions = predict_split(tiny_models[3], images, index, batch_size=4)
    assert list(predictions.columns) == [
        "image_id", "label", "label_index", "predicted", "predicted_index", "confidence", "correct",
        "prob_Benign", "prob_Early", "prob_Pre", "prob_Pro",
    ]  # fmt: skip
    probabilities = predictions[PROBABILITY_COLUMNS].to_numpy()
    assert probabilities.sum(axis=1) == pytest.approx(np.ones(10), abs=1e-5)
    assert (predictions["predicted_index"].to_numpy() == probabilities.argmax(axis=1)).all()
    assert list(predictions["predicted"]) == [CLASSES[k] for k in predictions["predicted_index"]]
    assert predictions["confidence"].to_numpy() == pytest.approx(probabilities.max(axis=1))
    assert (predictions["correct"] == (predictions["predicted_index"] == predictions["label_index"])).all()
    assert list(predictions["image_id"]) == list(index["image_id"])
    # The batch size only changes how the work is cut, not the answer.
    whole = predict_split(tiny_models[3], images, index, batch_size=32)
    assert whole[PROBABILITY_COLUMNS].to_numpy() == pytest.approx(probabilities, abs=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="Grad-CAM needs TensorFlow's gradients")
def test_gradcam_heatmaps_cover_the_last_conv_map(tiny_models: dict, tiny_split: tuple):
    images, _ = tiny_split
    heatmaps = gradcam_heatmaps(tiny_models[3], images[:3], np.array([0, 1, 2]))
    assert heatmaps.shape == (3, SIZE // 16, SIZE // 16)  # block5_conv3 follows four poolings
    assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0
    # Computed a few images at a time (memory), the same heat maps as all at once.
    in_pieces = gradcam_heatmaps(tiny_models[3], images[:3], np.array([0, 1, 2]), batch_size=2)
    assert in_pieces == pytest.approx(heatmaps, abs=1e-5)
    dual_images = np.concatenate([images[:2], images[:2]], axis=-1)
    assert gradcam_heatmaps(tiny_models[6], dual_images, np.array([3, 0])).shape == (2, 2, 2)


def test_every_figure_is_a_matplotlib_figure(tiny_models: dict, tiny_split: tuple):
    images, index = tiny_split
    predictions = predict_split(tiny_models[3], images, index, batch_size=4)
    everything_right = predictions.assign(
        label=predictions["predicted"], label_index=predictions["predicted_index"], correct=True
    )
    made = [
        plot_confusion_matrix(predictions),
        plot_roc_curves(predictions),
        plot_reliability_diagram(predictions, EVALUATION["ece_bins"]),
        plot_gradcam(tiny_models[3], images, predictions, EVALUATION["gradcam_per_class"]),
        plot_gradcam(tiny_models[6], np.concatenate([images, images], axis=-1), predictions, 1),
        plot_misclassified(images, predictions, EVALUATION["misclassified_max"]),
        plot_misclassified(images, everything_right, 4),
    ]
    assert all(isinstance(figure, Figure) for figure in made)
    assert "No misclassified images" in made[-1].axes[0].texts[0].get_text()
    for figure in made:
        plt.close(figure)


def test_gradcam_falls_back_to_a_plain_figure_without_tensorflow(
    monkeypatch: pytest.MonkeyPatch, tiny_split: tuple
):
    images, _ = tiny_split
    monkeypatch.setattr(figures.keras.backend, "backend", lambda: "jax")
    predictions = predictions_from(np.diag([1, 1, 1, 1]))
    figure = plot_gradcam(None, images, predictions, 2)
    assert "TensorFlow backend" in figure.axes[0].texts[0].get_text()
    plt.close(figure)


def test_the_card_template_refuses_a_context_without_a_value_it_shows(metrics: dict):
    context = model_card_context(metrics, SUMMARY, DATA_QUALITY, AUDIT, MODEL)
    del context["usable_images"]
    with pytest.raises(jinja2.UndefinedError, match="usable_images"):
        write_model_card(context)
