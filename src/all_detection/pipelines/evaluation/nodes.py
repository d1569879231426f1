"""Evaluation: the trained model's predictions on the validation and test splits, their metrics with
bootstrap intervals, MLflow metric histories, a classification report and a model card.

The figures are in `figures.py`. scikit-learn does the arithmetic; undefined metrics (a class absent
from a split) are None, never NaN, so every result is valid JSON.
"""

from __future__ import annotations

import logging
from typing import Any

import jinja2
import keras
import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    recall_score,
    roc_auc_score,
)

from all_detection.core.prediction import predict_probabilities
from all_detection.layout import CLASSES, PROBABILITY_COLUMNS

logger = logging.getLogger(__name__)

#: One probability column per class in the prediction frames, in the model's output order.
LABELS: list[int] = list(range(len(CLASSES)))
BENIGN = CLASSES.index("Benign")
DETECTION_POSITIVE = "malignant (Early, Pre or Pro)"
HISTORY_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds")
# Enough for any metric on a few thousand images, short enough to read in metrics.json.
DIGITS = 6


def predict_split(
    model: keras.Model, images: np.ndarray, index: pd.DataFrame, batch_size: int
) -> pd.DataFrame:
    """The model's class probabilities for every image of a split, one row per image in `index` order.

    Images are read from the (memory-mapped) stack `batch_size` at a time (`predict_probabilities`).
    Columns: `image_id`, `label`, `label_index`, `predicted` and `predicted_index` (the most probable
    class), `confidence` (its probability), `correct`, and `prob_<class>` per class.
    """
    if len(images) != len(index):
        raise ValueError(f"{len(images)} images but {len(index)} index rows; they must match row for row")
    probabilities = predict_probabilities(model, images, batch_size)
    predicted = probabilities.argmax(axis=1)
    label_index = index["label_index"].to_numpy(dtype=np.int64)
    predictions = pd.DataFrame(
        {
            "image_id": index["image_id"].astype(str).to_numpy(),
            "label": index["label"].astype(str).to_numpy(),
            "label_index": label_index,
            "predicted": np.asarray(CLASSES, dtype=object)[predicted],
            "predicted_index": predicted,
            "confidence": probabilities.max(axis=1, initial=0.0),
            "correct": predicted == label_index,
        }
    )
    return pd.concat([predictions, pd.DataFrame(probabilities, columns=PROBABILITY_COLUMNS)], axis=1)


def _number(value: float) -> float | None:
    """A metric rounded for the report, or None where it is undefined (NaN)."""
    value = float(value)
    return round(value, DIGITS) if np.isfinite(value) else None


def _arrays(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        predictions["label_index"].to_numpy(dtype=np.int64),
        predictions["predicted_index"].to_numpy(dtype=np.int64),
        predictions[PROBABILITY_COLUMNS].to_numpy(dtype=np.float64),
    )


def per_class_scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, dict[str, float | None]]:
    """Precision, recall, F1, specificity and support of each class, one class against the rest.

    A score whose denominator is empty (precision of a class never predicted, recall of a class absent
    from the split, specificity when every image is of that class) is None.
    """
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=LABELS, zero_division=np.nan
    )
    # Each class's [[tn, fp], [fn, tp]]: specificity is the recall of "not this class".
    counts = multilabel_confusion_matrix(truth, predicted, labels=LABELS)
    negatives = counts[:, 0, 0] + counts[:, 0, 1]
    specificity = np.divide(counts[:, 0, 0], negatives, out=np.full(len(LABELS), np.nan), where=negatives > 0)
    return {
        label: {
            "precision": _number(precision[k]),
            "recall": _number(recall[k]),
            "f1": _number(f1[k]),
            "specificity": _number(specificity[k]),
            "support": int(support[k]),
        }
        for k, label in enumerate(CLASSES)
    }


def one_vs_rest_auc(truth: np.ndarray, probabilities: np.ndarray) -> dict[str, float | None]:
    """ROC AUC of each class's probability against the rest, and their mean as `macro`.

    A class's AUC is None when the split lacks either its images or any other image; `macro` averages
    the defined ones (the same as scikit-learn's one-vs-rest macro AUC when all classes are present).
    """
    aucs = {
        label: _number(roc_auc_score(truth == k, probabilities[:, k]))
        if 0 < np.sum(truth == k) < len(truth)
        else None
        for k, label in enumerate(CLASSES)
    }
    defined = [value for value in aucs.values() if value is not None]
    return {**aucs, "macro": _number(np.mean(defined)) if defined else None}


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int) -> pd.DataFrame:
    """Equal-width confidence bins over [0, 1], each (lower, upper], with the number of predictions in
    it, their mean confidence and their accuracy (NaN in an empty bin)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(which, weights=np.asarray(correct, dtype=np.float64), minlength=bins) / count
    return pd.DataFrame(
        {
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": count,
            "confidence": mean_confidence,
            "accuracy": accuracy,
        }
    )


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """The count-weighted mean gap between accuracy and mean confidence over equal-width bins."""
    table = calibration_bins(confidence, correct, bins)
    filled = table[table["count"] > 0]
    gaps = (filled["accuracy"] - filled["confidence"]).abs()
    return float((filled["count"] * gaps).sum() / max(len(confidence), 1))


def bootstrap_intervals(
    truth: np.ndarray, predicted: np.ndarray, samples: int, level: float, seed: int
) -> dict[str, Any]:
    """Percentile bootstrap intervals of accuracy and macro F1, resampling images with replacement.

    Both metrics are computed on the same resamples; the generator is seeded, so the same seed gives
    the same intervals. The intervals say how much the numbers could move on another draw of images
    like these, not how they would fare on other patients or hospitals.
    """
    rng = np.random.default_rng(seed)
    accuracy, macro_f1 = np.empty(samples), np.empty(samples)
    for sample in range(samples):
        rows = rng.integers(0, len(truth), len(truth))
        accuracy[sample] = accuracy_score(truth[rows], predicted[rows])
        macro_f1[sample] = f1_score(truth[rows], predicted[rows], average="macro", zero_division=0)
    tail = 100 * (1 - level) / 2
    return {
        "accuracy": [_number(value) for value in np.percentile(accuracy, [tail, 100 - tail])],
        "macro_f1": [_number(value) for value in np.percentile(macro_f1, [tail, 100 - tail])],
        "level": level,
        "bootstrap_samples": samples,
    }


def detection_scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """Benign against any malignant stage: sensitivity and specificity of calling an image malignant,
    with the four counts. A rate with no images to measure it on is None."""
    malignant, called = truth != BENIGN, predicted != BENIGN
    tn, fp, fn, tp = confusion_matrix(malignant, called, labels=[False, True]).ravel()
    return {
        "positive": DETECTION_POSITIVE,
        "sensitivity": _number(recall_score(malignant, called, pos_label=True, zero_division=np.nan)),
        "specificity": _number(recall_score(malignant, called, pos_label=False, zero_division=np.nan)),
        "tp": int(tp),
        "fn": int(fn),
        "tn": int(tn),
        "fp": int(fp),
    }


def evaluate_split(predictions: pd.DataFrame, evaluation: dict[str, Any], seed: int) -> dict[str, Any]:
    """Every metric of one split's predictions, ready for metrics.json.

    Accuracy, per-class scores, macro and weighted F1 (over the classes present in truth or
    predictions, scikit-learn's convention), Cohen's kappa, MCC, one-vs-rest ROC AUC, the confusion
    matrix (counts and normalised by true class), the expected calibration error over
    `evaluation.ece_bins` bins, bootstrap intervals (`bootstrap_samples`, `confidence_level`, seeded
    with `seed`), benign-versus-malignant detection and `n`. An empty split gives only `n`: 0.
    """
    if predictions.empty:
        return {"n": 0}
    truth, predicted, probabilities = _arrays(predictions)
    return {
        "accuracy": _number(accuracy_score(truth, predicted)),
        "per_class": per_class_scores(truth, predicted),
        "macro_f1": _number(f1_score(truth, predicted, average="macro", zero_division=0)),
        "weighted_f1": _number(f1_score(truth, predicted, average="weighted", zero_division=0)),
        # Kappa is 0/0 when truth and predictions are one and the same single class.
        "cohen_kappa": _number(cohen_kappa_score(truth, predicted, labels=LABELS)),
        "mcc": _number(matthews_corrcoef(truth, predicted)),
        "roc_auc": one_vs_rest_auc(truth, probabilities),
        "confusion_matrix": {
            "labels": list(CLASSES),
            "counts": confusion_matrix(truth, predicted, labels=LABELS).tolist(),
            # Rows of classes absent from the split are all zeros.
            "normalized": [
                [_number(value) for value in row]
                for row in confusion_matrix(truth, predicted, labels=LABELS, normalize="true")
            ],
        },
        "ece": _number(
            expected_calibration_error(
                predictions["confidence"].to_numpy(dtype=np.float64),
                predictions["correct"].to_numpy(dtype=bool),
                evaluation["ece_bins"],
            )
        ),
        "confidence_intervals": bootstrap_intervals(
            truth, predicted, evaluation["bootstrap_samples"], evaluation["confidence_level"], seed
        ),
        "detection": detection_scores(truth, predicted),
        "n": len(predictions),
    }


def measure_leakage(
    augmented_train_index: pd.DataFrame, val_index: pd.DataFrame, test_index: pd.DataFrame
) -> dict[str, Any]:
    """How many validation and test images the training set has already seen, in some form.

    An image is counted when a training view comes from the same source image (the image itself or
    a random view of it) or from the same duplicate group (an exact or near copy). A held-out image's
    source is its `source_id` where the index has one (views split after augmentation, the paper's
    protocol), else its `image_id`. The project's own protocol gives zeros by construction; this
    measures it rather than assumes it, so every metrics.json says how honest its test set is.
    """
    seen_sources = set(augmented_train_index["source_id"].astype(str))
    seen_groups = set(augmented_train_index["group"].astype(str))
    leakage = {}
    for split, index in (("val", val_index), ("test", test_index)):
        sources = index["source_id"] if "source_id" in index else index["image_id"]
        same_source = int(sources.astype(str).isin(seen_sources).sum())
        same_group = int(index["group"].astype(str).isin(seen_groups).sum())
        leakage[split] = {
            "n": len(index),
            "same_source_in_training": same_source,
            "same_group_in_training": same_group,
            "fraction_same_source": _number(same_source / len(index)) if len(index) else None,
            "fraction_same_group": _number(same_group / len(index)) if len(index) else None,
        }
    return leakage


def assemble_metrics(
    val_metrics: dict[str, Any],
    test_metrics: dict[str, Any],
    training_summary: dict[str, Any],
    train_index: pd.DataFrame,
    augmented_train_index: pd.DataFrame,
    leakage: dict[str, Any],
    preprocessing: dict[str, Any],
    augmentation: dict[str, Any],
    tta: str,
) -> dict[str, Any]:
    """metrics.json: the test and validation blocks and a `run` block saying what was evaluated (training
    mode and epochs, base weights actually used, device, input mode and size, the `recipe`: where VGG16
    was cut and which of its layers were fine-tuned, class weights, class-balanced augmentation and
    test-time augmentation; the split sizes with the number of training views, and the measured
    `leakage` of training into validation and test)."""
    return {
        "test": test_metrics,
        "val": val_metrics,
        "run": {
            "mode": training_summary["mode"],
            "epochs_run": training_summary["epochs_run"],
            "best_epoch": training_summary["best_epoch"],
            "base_weights": training_summary["base_weights"]["used"],
            "device": training_summary["device"],
            "input_mode": preprocessing["input_mode"],
            "image_size": preprocessing["image_size"],
            "recipe": {
                "cache_at": training_summary["cache_at"],
                "fine_tuned_layers": training_summary["fine_tuned_layers"],
                "class_weight": training_summary["class_weight"],
                "balanced_augmentation": bool(augmentation["balance"]),
                "tta": tta,
            },
            "split_sizes": {
                "train": len(train_index),
                "train_views": len(augmented_train_index),
                "val": val_metrics["n"],
                "test": test_metrics["n"],
            },
            "leakage": leakage,
        },
    }


def _get(block: dict[str, Any], *path: str | int) -> Any:
    for key in path:
        try:
            block = block[key]
        except (KeyError, IndexError, TypeError):
            return None
    return block


def to_mlflow_metrics(metrics: dict[str, Any]) -> dict[str, dict[str, float | int]]:
    """The headline numbers of metrics.json as `{name: {"value", "step": 0}}` for MLflow, named
    `test_<metric>` and `validation_<metric>` (`test_accuracy`, `validation_f1_Benign`...), so they
    never mix with the per-epoch `val_*` history Keras reports. Undefined values are left out."""
    flat: dict[str, float | None] = {}
    for split, name_prefix in (("test", "test"), ("val", "validation")):
        block = metrics.get(split) or {}
        named = {
            "accuracy": ("accuracy",),
            "macro_f1": ("macro_f1",),
            "weighted_f1": ("weighted_f1",),
            "kappa": ("cohen_kappa",),
            "mcc": ("mcc",),
            "roc_auc_macro": ("roc_auc", "macro"),
            "ece": ("ece",),
            "sensitivity": ("detection", "sensitivity"),
            "specificity": ("detection", "specificity"),
            "accuracy_ci_low": ("confidence_intervals", "accuracy", 0),
            "accuracy_ci_high": ("confidence_intervals", "accuracy", 1),
            "macro_f1_ci_low": ("confidence_intervals", "macro_f1", 0),
            "macro_f1_ci_high": ("confidence_intervals", "macro_f1", 1),
        }
        for label in CLASSES:
            for score in ("f1", "precision", "recall", "specificity"):
                named[f"{score}_{label}"] = ("per_class", label, score)
            named[f"roc_auc_{label}"] = ("roc_auc", label)
        flat.update({f"{name_prefix}_{name}": _get(block, *path) for name, path in named.items()})
    return {
        name: {"value": float(value), "step": 0}
        for name, value in flat.items()
        if value is not None and np.isfinite(value)
    }


def history_to_mlflow_metrics(training_history: pd.DataFrame) -> dict[str, list[dict[str, float | int]]]:
    """Each per-epoch column of the training history as an MLflow metric history, one step per epoch
    (the step is the epoch number, so a fine-tuning phase continues where the head's training stopped)."""
    return {
        column: [
            {"value": float(value), "step": int(epoch)}
            for epoch, value in zip(training_history["epoch"], training_history[column], strict=True)
            if np.isfinite(value)
        ]
        for column in HISTORY_METRICS
        if column in training_history.columns
    }


def write_classification_report(val_predictions: pd.DataFrame, test_predictions: pd.DataFrame) -> str:
    """scikit-learn's classification report of the test split, then of the validation split."""
    sections = []
    for title, predictions in (("Test split", test_predictions), ("Validation split", val_predictions)):
        truth, predicted, _ = _arrays(predictions)
        report = (
            classification_report(
                truth, predicted, labels=LABELS, target_names=list(CLASSES), digits=4, zero_division=0
            )
            if len(predictions)
            else "(no images)\n"
        )
        sections.append(f"{title} ({len(predictions)} images)\n{'=' * 40}\n{report}")
    return "\n".join(sections)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _interval(pair: list[float | None] | None) -> str:
    return "n/a" if not pair or None in pair else f"{pair[0]:.3f} to {pair[1]:.3f}"


def model_card_context(
    metrics: dict[str, Any],
    training_summary: dict[str, Any],
    data_quality: dict[str, Any],
    model_settings: dict[str, Any],
) -> dict[str, Any]:
    """Everything the model card says, formatted: the run's data and provenance, split protocol (from
    the leakage measured, not from intentions), model, training, test results with their bootstrap
    intervals, per-class scores, calibration and detection. `model_settings` is the `model` parameters
    (base weights, input scaling, head); a synthetic dataset (`dataset.synthetic`, recorded in the
    data-quality report) is said to be one."""
    test, val, run = metrics["test"], metrics["val"], metrics["run"]
    weights = training_summary["base_weights"]
    split = data_quality.get("split", {})
    intervals = test.get("confidence_intervals", {})
    recipe = run.get("recipe", {})
    head = model_settings.get("head", {})
    return {
        "classes": list(CLASSES),
        "synthetic": bool(data_quality.get("synthetic")),
        "root": str(data_quality.get("dataset_root", "")),
        "weights_warning": weights.get("warning"),
        "weights_requested": weights.get("requested"),
        "weights_used": weights.get("used"),
        "input_scaling": model_settings.get("input_scaling", "n/a"),
        "head": {key: head.get(key, "n/a") for key in ("conv_filters", "dense_units", "dropout")},
        "files": data_quality["files"],
        "quarantine_reasons": _reasons(data_quality.get("quarantined", {}).get("by_reason", {})),
        "usable_images": _usable_images(data_quality),
        "split_table": [
            {"label": label, **{name: counts.get(name, 0) for name in ("train", "val", "test", "total")}}
            for label, counts in data_quality["images_per_class_and_split"].items()
        ],
        "split_protocol": _split_protocol(run, data_quality, split, split.get("requested", {})),
        "split_sizes": _sizes(run["split_sizes"]),
        "fine_tuning": _fine_tuning(recipe),
        "run": {
            key: run[key]
            for key in ("input_mode", "image_size", "mode", "epochs_run", "best_epoch", "device")
        },
        "class_weight": recipe.get("class_weight", "none"),
        "balanced_augmentation": "on" if recipe.get("balanced_augmentation") else "off",
        "tta": _tta(recipe.get("tta", "none")),
        "test_n": test.get("n", 0),
        "level": round(100 * intervals.get("level", 0.95)),
        "bootstrap_samples": intervals.get("bootstrap_samples", "n/a"),
        "headline": [
            {
                "metric": "accuracy",
                "test": _fmt(test.get("accuracy")),
                "interval": _interval(intervals.get("accuracy")),
                "val": _fmt(val.get("accuracy")),
            },
            {
                "metric": "macro F1",
                "test": _fmt(test.get("macro_f1")),
                "interval": _interval(intervals.get("macro_f1")),
                "val": _fmt(val.get("macro_f1")),
            },
            {
                "metric": "weighted F1",
                "test": _fmt(test.get("weighted_f1")),
                "interval": "",
                "val": _fmt(val.get("weighted_f1")),
            },
            {
                "metric": "Cohen's kappa",
                "test": _fmt(test.get("cohen_kappa")),
                "interval": "",
                "val": _fmt(val.get("cohen_kappa")),
            },
            {"metric": "MCC", "test": _fmt(test.get("mcc")), "interval": "", "val": _fmt(val.get("mcc"))},
            {
                "metric": "ROC AUC (macro, one-vs-rest)",
                "test": _fmt(_get(test, "roc_auc", "macro")),
                "interval": "",
                "val": _fmt(_get(val, "roc_auc", "macro")),
            },
        ],
        "per_class": [
            {
                "label": label,
                **{name: _fmt(scores[name]) for name in ("precision", "recall", "f1", "specificity")},
                "roc_auc": _fmt(_get(test, "roc_auc", label)),
                "support": scores["support"],
            }
            for label, scores in test.get("per_class", {}).items()
        ],
        "ece_test": _fmt(test.get("ece")),
        "ece_val": _fmt(val.get("ece")),
        "detection": {
            "positive": DETECTION_POSITIVE,
            "sensitivity": _fmt(_get(test, "detection", "sensitivity")),
            "specificity": _fmt(_get(test, "detection", "specificity")),
            **{count: _get(test, "detection", count) for count in ("tp", "fn", "tn", "fp")},
        },
        "pro_agreement": _pro_agreement(data_quality),
    }


def write_model_card(context: dict[str, Any]) -> str:
    """The Markdown model card: `templates/model_card.md.j2` filled with `model_card_context`'s values
    (a value missing from the context is an error, never a blank)."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("all_detection", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown, not HTML: the card's words are ours and the values are numbers
    )
    return environment.get_template("model_card.md.j2").render(context)


def _split_protocol(
    run: dict[str, Any], data_quality: dict[str, Any], split: dict[str, Any], requested: dict[str, Any]
) -> list[str]:
    """The card's split section, from the leakage measured in this run rather than from intentions."""
    leaked = _get(run, "leakage", "test", "same_source_in_training") or 0
    if leaked:
        fraction = _get(run, "leakage", "test", "fraction_same_source") or 0
        return [
            f"- **Leaky protocol.** {leaked} of the {run['split_sizes']['test']} test images "
            f"({100 * fraction:.1f}%) have their source image, or a random view of it, in the training "
            "set: the images were augmented before they were split, as Mishra et al. did. These test "
            "numbers measure recall of seen images, not generalisation to new ones.",
        ]
    return [
        "- The images were split into training, validation and test sets **before augmentation**; only the "
        "training split was augmented, so no test image, nor a transform of one, was seen in training "
        "(measured: no test image shares a source image or a duplicate group with a training view).",
        "- Exact and near-duplicate images form groups that were **kept together** in one split "
        f"({_get(data_quality, 'duplicates', 'exact_groups') or 0} exact and "
        f"{_get(data_quality, 'duplicates', 'near_groups') or 0} near-duplicate groups).",
        f"- **Stratified** by class, **seeded** (seed {split.get('seed', 'n/a')}), with fractions "
        f"test {requested.get('test_fraction', 'n/a')} and validation {requested.get('val_fraction', 'n/a')} "
        "of the usable images of each class.",
    ]


def _fine_tuning(recipe: dict[str, Any]) -> str:
    tuned = recipe.get("fine_tuned_layers") or []
    if not tuned:
        return "**Frozen**: all of VGG16 keeps its ImageNet weights; only the head was trained."
    return (
        f"**Fine-tuned**: the head trained first on the frozen features, then VGG16's "
        f"{', '.join(tuned)} trained with it (the base was cached at `{recipe.get('cache_at')}`); "
        "every layer below stayed as ImageNet trained it."
    )


def _tta(tta: str) -> str:
    if tta == "dihedral":
        return (
            "`dihedral`: each image's probabilities are the mean over its 8 exact rotations and mirror "
            "images, in evaluation, inference and MLflow serving alike."
        )
    return "none."


def _usable_images(data_quality: dict[str, Any]) -> int:
    # The split table's total, the same count as the MLflow parameter data.usable_images.
    return sum(counts["total"] for counts in data_quality["images_per_class_and_split"].values())


def _reasons(by_reason: dict[str, int]) -> str:
    return f" ({', '.join(f'{reason}: {count}' for reason, count in by_reason.items())})" if by_reason else ""


def _sizes(sizes: dict[str, int]) -> str:
    return ", ".join(f"{split} {count}" for split, count in sizes.items())


def _pro_agreement(data_quality: dict[str, Any]) -> str:
    dice = _get(data_quality, "segmentation_agreement", "Pro", "dice_mean")
    return (
        ""
        if dice is None
        else f"; the colour-threshold segmentation agrees with the dataset's Pro masks at Dice {dice:.2f}"
    )
