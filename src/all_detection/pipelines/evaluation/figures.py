"""Evaluation figures: confusion matrices, ROC curves, training curves, reliability diagram, Grad-CAM
and misclassified test images, each a matplotlib Figure for the catalog to save.

Of a 6-channel (dual) image the original half (channels 0-2) is shown.
"""

from __future__ import annotations

import math

import keras
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import ConfusionMatrixDisplay, roc_curve

from all_detection.core.model import gradcam_layers
from all_detection.gradcam import gradcam_heatmaps
from all_detection.layout import CLASSES, PROBABILITY_COLUMNS
from all_detection.metrics import LABELS, calibration_bins, expected_calibration_error, one_vs_rest_auc

_RIGHT, _WRONG = "tab:green", "tab:red"


def _message_figure(title: str, message: str) -> Figure:
    figure, ax = plt.subplots(figsize=(6, 2.5))
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, wrap=True)
    ax.set_title(title, fontsize=11)
    return figure


def _shown(image: np.ndarray) -> np.ndarray:
    return np.asarray(image)[..., :3]


def plot_confusion_matrix(test_predictions: pd.DataFrame) -> Figure:
    """The test split's confusion matrix twice, side by side: counts, and normalised by true class (each
    row sums to 1, so the diagonal is each class's recall)."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    truth, predicted = test_predictions["label_index"], test_predictions["predicted_index"]
    for ax, normalize, values_format, title in (
        (axes[0], None, "d", "Counts"),
        (axes[1], "true", ".2f", "Normalised by true class"),
    ):
        ConfusionMatrixDisplay.from_predictions(
            truth,
            predicted,
            labels=LABELS,
            display_labels=list(CLASSES),
            normalize=normalize,
            values_format=values_format,
            cmap="Blues",
            colorbar=False,
            ax=ax,
            im_kw={"vmin": 0, "vmax": 1} if normalize else None,
        )
        ax.set_title(title, fontsize=11)
    figure.suptitle(f"Confusion matrix, test split ({len(test_predictions)} images)", fontsize=12)
    figure.tight_layout()
    return figure


def plot_roc_curves(test_predictions: pd.DataFrame) -> Figure:
    """One-vs-rest ROC curve of each class on the test split, and their macro average (the mean true
    positive rate at each false positive rate). Classes absent from the split have no curve."""
    truth = test_predictions["label_index"].to_numpy()
    probabilities = test_predictions[PROBABILITY_COLUMNS].to_numpy(dtype=np.float64)
    aucs = one_vs_rest_auc(truth, probabilities)
    grid = np.linspace(0.0, 1.0, 201)
    curves = []
    figure, ax = plt.subplots(figsize=(6, 5.5))
    for k, label in enumerate(CLASSES):
        if aucs[label] is None:
            continue
        fpr, tpr, _ = roc_curve(truth == k, probabilities[:, k])
        ax.plot(fpr, tpr, lw=1.5, label=f"{label} (AUC {aucs[label]:.3f})")
        curves.append(np.interp(grid, fpr, tpr))
    if curves:
        ax.plot(grid, np.mean(curves, axis=0), "k--", lw=2, label=f"macro average (AUC {aucs['macro']:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="False positive rate", ylabel="True positive rate")
    ax.set_title(f"ROC curves, one class against the rest (test, {len(truth)} images)", fontsize=11)
    ax.legend(loc="lower right", fontsize=9)
    figure.tight_layout()
    return figure


def plot_training_curves(training_history: pd.DataFrame) -> Figure:
    """Accuracy and loss per epoch, training against validation (the paper's Figure 8), with the epoch
    of lowest validation loss (whose weights were kept) and any fine-tuning phase marked."""
    if training_history.empty:
        return _message_figure("Training curves", "No training history")
    epochs = training_history["epoch"].to_numpy()
    best = int(training_history.loc[training_history["val_loss"].idxmin(), "epoch"])
    fine_tune = training_history.loc[training_history["phase"] == "fine_tune", "epoch"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, title in ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", "Loss")):
        ax.plot(epochs, training_history[metric], "o-", ms=3, label="training")
        ax.plot(epochs, training_history[f"val_{metric}"], "s-", ms=3, label="validation")
        ax.axvline(best, color="grey", ls="--", lw=1, label=f"best epoch ({best})")
        if len(fine_tune):
            ax.axvspan(
                fine_tune.min() - 0.5,
                fine_tune.max() + 0.5,
                color="tab:orange",
                alpha=0.12,
                label="fine-tuning",
            )
        ax.set(xlabel="Epoch", title=title)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 1.02)
    axes[0].legend(fontsize=9)
    figure.suptitle("Training and validation curves", fontsize=12)
    figure.tight_layout()
    return figure


def plot_reliability_diagram(test_predictions: pd.DataFrame, ece_bins: int) -> Figure:
    """Accuracy against mean confidence in equal-width confidence bins on the test split, the diagonal
    being perfect calibration, with the expected calibration error in the title and the number of
    images per bin below."""
    confidence = test_predictions["confidence"].to_numpy(dtype=np.float64)
    correct = test_predictions["correct"].to_numpy(dtype=bool)
    bins = calibration_bins(confidence, correct, ece_bins)
    ece = expected_calibration_error(confidence, correct, ece_bins)
    filled = bins[bins["count"] > 0]
    width = 1.0 / ece_bins
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.bar(
        filled["lower"],
        filled["accuracy"],
        width=width,
        align="edge",
        edgecolor="black",
        color="tab:blue",
        label="accuracy",
    )
    top.bar(
        filled["lower"],
        filled["confidence"] - filled["accuracy"],
        bottom=filled["accuracy"],
        width=width,
        align="edge",
        color="tab:red",
        alpha=0.3,
        hatch="//",
        label="gap to confidence",
    )
    top.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="Accuracy")
    top.legend(loc="upper left", fontsize=9)
    top.set_title(f"Reliability diagram, test split (ECE = {ece:.3f}, {ece_bins} bins)", fontsize=11)
    bottom.bar(bins["lower"], bins["count"], width=width, align="edge", edgecolor="black", color="grey")
    bottom.set(xlabel="Confidence (probability of the predicted class)", ylabel="Images")
    bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    return figure


def _most_confident(predictions: pd.DataFrame, mask: pd.Series, count: int) -> list[int]:
    chosen = predictions[mask].sort_values("confidence", ascending=False, kind="stable")
    return [int(row) for row in chosen.index[:count]]


def plot_gradcam(
    model: keras.Model, test_images: np.ndarray, test_predictions: pd.DataFrame, per_class: int
) -> Figure:
    """Grad-CAM heatmaps over test images: one row per true class, its `per_class` most confident correct
    predictions, then its `per_class` most confident wrong ones, each explained for the predicted class.

    Under a Keras backend other than TensorFlow a plain figure says Grad-CAM needs it.
    """
    if keras.backend.backend() != "tensorflow":
        return _message_figure("Grad-CAM", "Grad-CAM needs the TensorFlow backend")
    if per_class < 1 or test_predictions.empty:
        return _message_figure("Grad-CAM", "No test images chosen for Grad-CAM")
    predictions = test_predictions.reset_index(drop=True)
    cells: dict[tuple[int, int], int] = {}
    for k, label in enumerate(CLASSES):
        of_class, correct = predictions["label"] == label, predictions["correct"].astype(bool)
        right = _most_confident(predictions, of_class & correct, per_class)
        wrong = _most_confident(predictions, of_class & ~correct, per_class)
        cells |= {(k, column): row for column, row in enumerate(right)}
        cells |= {(k, per_class + column): row for column, row in enumerate(wrong)}
    rows = sorted(set(cells.values()))
    explained = predictions["predicted_index"].to_numpy()[rows]
    heatmaps = (
        dict(zip(rows, gradcam_heatmaps(model, test_images[rows], explained), strict=True)) if rows else {}
    )
    columns = 2 * per_class
    figure, axes = plt.subplots(
        len(CLASSES), columns, figsize=(2.1 * columns, 2.3 * len(CLASSES)), squeeze=False
    )
    for k, label in enumerate(CLASSES):
        for column in range(columns):
            ax = axes[k, column]
            ax.set_axis_off()
            row = cells.get((k, column))
            if row is None:
                ax.text(
                    0.5,
                    0.5,
                    "none",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="grey",
                    transform=ax.transAxes,
                )
                continue
            image = _shown(test_images[row])
            height, width = image.shape[:2]
            ax.imshow(image)
            ax.imshow(
                heatmaps[row],
                cmap="jet",
                alpha=0.4,
                extent=(0, width, height, 0),
                interpolation="bilinear",
                vmin=0,
                vmax=1,
            )
            correct = bool(predictions.at[row, "correct"])
            ax.set_title(
                f"{predictions.at[row, 'predicted']} ({predictions.at[row, 'confidence']:.2f})",
                fontsize=8,
                color=_RIGHT if correct else _WRONG,
            )
        axes[k, 0].text(
            -0.08,
            0.5,
            label,
            transform=axes[k, 0].transAxes,
            rotation=90,
            ha="right",
            va="center",
            fontsize=10,
        )
    last_conv = gradcam_layers(model)["to_last_conv"][-1].name
    figure.suptitle(
        f"Grad-CAM on {last_conv} (test): rows are true classes; left {per_class} correct, right "
        f"{per_class} wrong; titles give the predicted class (confidence)",
        fontsize=9,
    )
    figure.tight_layout()
    return figure


def plot_misclassified(test_images: np.ndarray, test_predictions: pd.DataFrame, max_images: int) -> Figure:
    """Up to `max_images` misclassified test images, most confident errors first, each titled
    "true -> predicted (confidence)"; a single panel says so when there are none."""
    predictions = test_predictions.reset_index(drop=True)
    rows = _most_confident(predictions, ~predictions["correct"].astype(bool), max_images)
    if not rows:
        return _message_figure(
            "Misclassified test images", f"No misclassified images among {len(predictions)} test images"
        )
    columns = min(4, len(rows))
    lines = math.ceil(len(rows) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(2.6 * columns, 2.7 * lines), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, row in zip(axes.flat, rows, strict=False):
        ax.imshow(_shown(test_images[row]))
        ax.set_title(
            f"{predictions.at[row, 'label']} -> {predictions.at[row, 'predicted']} "
            f"({predictions.at[row, 'confidence']:.2f})",
            fontsize=9,
        )
    wrong = int((~predictions["correct"].astype(bool)).sum())
    figure.suptitle(
        f"Misclassified test images: {len(rows)} of {wrong} shown, most confident first", fontsize=11
    )
    figure.tight_layout()
    return figure
