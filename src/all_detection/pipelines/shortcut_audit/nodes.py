"""The shortcut audit: does the trained model read the cells, or the way each class was stained and
photographed?

Three measures, on the run's own splits. Null models: scikit-learn classifiers trained on the training
split's morphology-free cues (global colour statistics, the corner patches, an 8x8 thumbnail) and scored
on the test split, the bar a claim of morphology must clear. Counterfactual tests: the trained model
scored on test smears changed in one way each (one pooled stain, another class's stain, corners
painted out, background flattened, grey levels), against the same smears unchanged. Where the model
looks: the share of its Grad-CAM evidence inside the dilated blast mask, in the corners and elsewhere.

Images are read from the image folder (`raw_images`) as found, changed at their own resolution, then
prepared by `segmentation.model_input` exactly as training images were, so the audit holds for every
input mode. Everything is seeded: two runs give the same audit.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import cv2
import keras
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from all_detection.core.prediction import predict_probabilities
from all_detection.core.stain import stain_statistics
from all_detection.gradcam import gradcam_heatmaps
from all_detection.image_io import ImageFolder
from all_detection.layout import CLASSES, whole_images
from all_detection.metrics import bootstrap_intervals, reported
from all_detection.segmentation import blast_mask, dilated, model_input
from all_detection.shortcuts import (
    colour_statistics,
    corner_mask,
    corner_patches,
    flatten_background,
    grey_levels,
    paint_corners,
    recoloured,
    thumbnail,
)

logger = logging.getLogger(__name__)

#: The null models: a cue with no morphology in it, and the classifier trained on it.
NULL_MODELS = {
    "colour_statistics": "global colour: mean, sd and 5-95th percentiles of R, G, B, H, S and V (42 numbers)",
    "corner_patches": "the four corner squares shrunk to a few pixels (scale-bar label, marks, vignetting)",
    "thumbnail": "the whole image shrunk to a thumbnail (colour and layout, no cell shapes)",
}
#: The counterfactual smears, each changing one thing a shortcut could rest on and keeping the cells.
COUNTERFACTUALS = {
    "pooled_stain": "every image given one stain, the mean of the audited images' (Reinhard, CIELAB)",
    "stain_swap": "each image given the stain of a random audited image of another class (Reinhard)",
    "corners_painted": "the four corner squares painted in the image's median colour",
    "background_flattened": "everything outside the dilated blast mask in one colour (its median)",
    "grey_levels": "luminance only, in all three channels",
}
#: Where Grad-CAM's evidence can lie: on the stained cells, in the corners, or anywhere else.
REGIONS = ("blast_mask", "corners", "elsewhere")


def choose_audit_sample(test_index: pd.DataFrame, shortcut_audit: dict[str, Any], seed: int) -> pd.DataFrame:
    """The test images the counterfactuals and Grad-CAM are measured on: a seeded draw of
    `shortcut_audit.images_per_class` whole images of each class (all of a class that has fewer), in
    test-split order. Each counterfactual costs a model pass per image (8 VGG16 passes with dihedral
    test-time augmentation), so the audit samples rather than scoring the whole test split five times."""
    images = whole_images(test_index)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in CLASSES:
        rows = np.flatnonzero(images["label"].to_numpy() == label)
        take = min(len(rows), int(shortcut_audit["images_per_class"]))
        chosen.append(rng.choice(rows, size=take, replace=False))
    return images.iloc[np.sort(np.concatenate(chosen))].reset_index(drop=True)


def _scores(
    truth: np.ndarray, predicted: np.ndarray, evaluation: dict[str, Any], seed: int
) -> dict[str, Any]:
    """Accuracy with its bootstrap interval, and per-class recall, of one set of predictions."""
    intervals = bootstrap_intervals(
        truth, predicted, evaluation["bootstrap_samples"], evaluation["confidence_level"], seed
    )
    return {
        "accuracy": reported(np.mean(predicted == truth)) if len(truth) else None,
        "interval": intervals["accuracy"],
        "recall": {
            label: reported(np.mean(predicted[truth == k] == k)) if np.any(truth == k) else None
            for k, label in enumerate(CLASSES)
        },
        "n": len(truth),
    }


def cue_features(
    rgb: np.ndarray, shortcut_audit: dict[str, Any], corner_fraction: float
) -> dict[str, np.ndarray]:
    """Each null model's cue of one smear (`NULL_MODELS`); the corner squares' side is `corner_fraction`
    of the image's (`preprocessing.corners.fraction`)."""
    return {
        "colour_statistics": colour_statistics(rgb),
        "corner_patches": corner_patches(rgb, corner_fraction, shortcut_audit["corner_patch_px"]),
        "thumbnail": thumbnail(rgb, shortcut_audit["thumbnail_px"]),
    }


def _null_classifier(cue: str, seed: int) -> Any:
    # Colour statistics are a few dozen graded numbers: a linear model on standardised values. Pixels
    # of patches and thumbnails interact: gradient-boosted trees, which need no scaling.
    if cue == "colour_statistics":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    return HistGradientBoostingClassifier(random_state=seed)


def fit_null_models(
    train_index: pd.DataFrame,
    test_index: pd.DataFrame,
    raw_images: ImageFolder,
    shortcut_audit: dict[str, Any],
    preprocessing: dict[str, Any],
    ingestion: dict[str, Any],
    evaluation: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """Each null model trained on the training split's whole images and scored on the test split's:
    accuracy with its bootstrap interval and per-class recall, the classifier and the cue's size. A
    model of the cells should beat all three by more than their intervals; if a colour detector
    matches it, its accuracy says nothing about morphology."""
    splits = {name: whole_images(index) for name, index in (("train", train_index), ("test", test_index))}
    cues_of = partial(
        cue_features, shortcut_audit=shortcut_audit, corner_fraction=preprocessing["corners"]["fraction"]
    )
    cues: dict[str, dict[str, np.ndarray]] = {}
    for split, images in splits.items():
        what = f"{split} images for null models"
        per_smear = raw_images.read_each(images["path"], ingestion, what, cues_of)
        cues[split] = {cue: np.stack([features[cue] for features in per_smear]) for cue in NULL_MODELS}
    truth = splits["test"]["label_index"].to_numpy()
    results = {}
    for cue, description in NULL_MODELS.items():
        classifier = _null_classifier(cue, seed)
        classifier.fit(cues["train"][cue], splits["train"]["label_index"].to_numpy())
        predicted = classifier.predict(cues["test"][cue]).astype(np.int64)
        results[cue] = {
            "cue": description,
            "classifier": type(classifier[-1] if hasattr(classifier, "steps") else classifier).__name__,
            "features": int(cues["train"][cue].shape[1]),
            "trained_on": len(splits["train"]),
            **_scores(truth, predicted, evaluation, seed),
        }
        logger.info("Null model on %s: test accuracy %.3f", cue, results[cue]["accuracy"] or 0)
    return results


def counterfactual_smears(
    smears: list[np.ndarray],
    labels: np.ndarray,
    shortcut_audit: dict[str, Any],
    preprocessing: dict[str, Any],
    seed: int,
) -> tuple[dict[str, list[np.ndarray]], np.ndarray]:
    """Each counterfactual of each smear (`COUNTERFACTUALS`), at the smear's own resolution, and each
    smear's stain donor for the stain swap: a seeded random smear of another class among `smears`.

    The pooled stain is the mean of the smears' own stains (CIELAB means and standard deviations); the
    blast mask is the project's HSV mask (`preprocessing.segmentation`) dilated by
    `preprocessing.masked.dilation_px`, as the masked input mode uses it.
    """
    stains = [stain_statistics(rgb[None]) for rgb in smears]
    means = np.concatenate([mean for mean, _ in stains])
    spreads = np.concatenate([spread for _, spread in stains])
    rng = np.random.default_rng(seed)
    donors = np.array([rng.choice(np.flatnonzero(labels != label)) for label in labels], dtype=np.int64)
    fraction = preprocessing["corners"]["fraction"]
    masked = preprocessing["masked"]
    changed: dict[str, list[np.ndarray]] = {name: [] for name in COUNTERFACTUALS}
    for position, rgb in enumerate(smears):
        cells = dilated(blast_mask(rgb, preprocessing["segmentation"]), masked["dilation_px"])
        donor = donors[position]
        changed["pooled_stain"].append(recoloured(rgb, means.mean(axis=0), spreads.mean(axis=0)))
        changed["stain_swap"].append(recoloured(rgb, means[donor], spreads[donor]))
        changed["corners_painted"].append(paint_corners(rgb, fraction))
        changed["background_flattened"].append(flatten_background(rgb, cells))
        changed["grey_levels"].append(grey_levels(rgb))
    return changed, donors


def model_inputs(smears: list[np.ndarray], preprocessing: dict[str, Any]) -> np.ndarray:
    """The smears as the network sees them (`model_input`), stacked."""
    return np.stack([model_input(rgb, preprocessing)[0] for rgb in smears])


def score_counterfactuals(
    model: keras.Model,
    audit_sample: pd.DataFrame,
    test_predictions: pd.DataFrame,
    raw_images: ImageFolder,
    shortcut_audit: dict[str, Any],
    preprocessing: dict[str, Any],
    ingestion: dict[str, Any],
    evaluation: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """The trained model on the audited smears as they are and under each counterfactual: accuracy with
    its interval, per-class recall and the drop from the unchanged smears; for the stain swap, also the
    share of predictions that follow the donor's class instead. The unchanged predictions are the
    evaluation's own (`test_predictions`), the same images through the same model."""
    results: dict[str, Any] = {
        "images": len(audit_sample),
        "images_per_class": int(shortcut_audit["images_per_class"]),
    }
    if audit_sample.empty:
        return results
    truth = audit_sample["label_index"].to_numpy()
    unchanged = test_predictions.iloc[audit_sample["row"].to_numpy()]
    results["unchanged"] = _scores(
        truth, unchanged["predicted_index"].to_numpy(dtype=np.int64), evaluation, seed
    )
    smears = raw_images.read_each(audit_sample["path"], ingestion, "audited images")
    changed, donors = counterfactual_smears(smears, truth, shortcut_audit, preprocessing, seed)
    baseline = results["unchanged"]["accuracy"]
    for name, description in COUNTERFACTUALS.items():
        probabilities = predict_probabilities(
            model, model_inputs(changed[name], preprocessing), evaluation["predict_batch_size"]
        )
        predicted = probabilities.argmax(axis=1)
        scores = _scores(truth, predicted, evaluation, seed)
        results[name] = {"change": description, **scores, "drop": reported(baseline - scores["accuracy"])}
        if name == "stain_swap":
            results[name]["follows_donor"] = reported(np.mean(predicted == truth[donors]))
        logger.info("Counterfactual %s: accuracy %.3f (unchanged %.3f)", name, scores["accuracy"], baseline)
    return results


def locate_attention(
    model: keras.Model,
    audit_sample: pd.DataFrame,
    test_predictions: pd.DataFrame,
    raw_images: ImageFolder,
    shortcut_audit: dict[str, Any],
    preprocessing: dict[str, Any],
    ingestion: dict[str, Any],
) -> dict[str, Any]:
    """Where the model looks: per true class and overall, the mean share of each audited smear's Grad-CAM
    evidence (for its predicted class) inside the dilated blast mask, in the corner squares outside it,
    and elsewhere, beside the share of the image each region covers (what evidence spread evenly would
    give). Needs the TensorFlow backend; elsewhere it says so."""
    if keras.backend.backend() != "tensorflow":
        return {"available": False, "reason": "Grad-CAM needs the TensorFlow backend"}
    if audit_sample.empty:
        return {"available": False, "reason": "no test images to explain"}
    smears = raw_images.read_each(audit_sample["path"], ingestion, "images for Grad-CAM")
    explained = test_predictions["predicted_index"].to_numpy(dtype=np.int64)[audit_sample["row"].to_numpy()]
    heatmaps = gradcam_heatmaps(model, model_inputs(smears, preprocessing), explained)
    shares, areas = [], []
    for rgb, heatmap in zip(smears, heatmaps, strict=True):
        height, width = rgb.shape[:2]
        heat = np.maximum(cv2.resize(heatmap.astype(np.float32), (width, height)), 0)
        cells = dilated(
            blast_mask(rgb, preprocessing["segmentation"]), preprocessing["masked"]["dilation_px"]
        )
        corners = corner_mask(height, width, preprocessing["corners"]["fraction"]) & ~cells
        regions = {"blast_mask": cells, "corners": corners, "elsewhere": ~cells & ~corners}
        total = heat.sum()
        shares.append([heat[region].sum() / total if total > 0 else np.nan for region in regions.values()])
        areas.append([region.mean() for region in regions.values()])
    shares, areas = np.array(shares), np.array(areas)
    labels = audit_sample["label"].to_numpy()

    # A network with no evidence for its answer (a flat heatmap) has no shares to count.
    explained_rows = np.isfinite(shares).all(axis=1)

    def summary(rows: np.ndarray) -> dict[str, Any]:
        counted = rows & explained_rows
        return {
            "share": {
                region: reported(shares[counted, k].mean()) if counted.any() else None
                for k, region in enumerate(REGIONS)
            },
            "area": {region: reported(areas[rows, k].mean()) for k, region in enumerate(REGIONS)},
            "n": int(rows.sum()),
            "explained": int(counted.sum()),
        }

    per_class = {label: summary(labels == label) for label in CLASSES if np.any(labels == label)}
    return {"available": True, "all": summary(np.ones(len(labels), bool)), "per_class": per_class}


def assemble_shortcut_audit(
    null_models: dict[str, Any],
    counterfactuals: dict[str, Any],
    attention: dict[str, Any],
    test_index: pd.DataFrame,
    shortcut_audit: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """shortcut_audit.json: the null models, the counterfactual tests and where the model looks, with
    what the audit was run on (test images, the chance rate of always answering the commonest class,
    the settings and seed)."""
    labels = whole_images(test_index)["label"]
    return {
        "test_images": len(labels),
        "chance": {
            "majority_class": reported(labels.value_counts(normalize=True).max()) if len(labels) else None
        },
        "null_models": null_models,
        "counterfactuals": counterfactuals,
        "attention": attention,
        "settings": {**shortcut_audit, "seed": seed},
    }


def shortcut_audit_mlflow_metrics(shortcut_audit: dict[str, Any]) -> dict[str, dict[str, float | int]]:
    """The audit's headline numbers for MLflow, `audit_<part>_accuracy` (`audit_null_colour_statistics_
    accuracy`, `audit_stain_swap_accuracy`...), `audit_stain_swap_follows_donor` and the Grad-CAM shares
    `audit_gradcam_<region>_share`. Undefined values are left out."""
    flat: dict[str, Any] = {
        f"audit_null_{name}_accuracy": block.get("accuracy")
        for name, block in shortcut_audit["null_models"].items()
    }
    counterfactuals = shortcut_audit["counterfactuals"]
    for name in ("unchanged", *COUNTERFACTUALS):
        if name in counterfactuals:
            flat[f"audit_{name}_accuracy"] = counterfactuals[name].get("accuracy")
    flat["audit_stain_swap_follows_donor"] = (counterfactuals.get("stain_swap") or {}).get("follows_donor")
    attention = shortcut_audit["attention"]
    if attention.get("available"):
        for region, share in attention["all"]["share"].items():
            flat[f"audit_gradcam_{region}_share"] = share
    return {
        name: {"value": float(value), "step": 0}
        for name, value in flat.items()
        if value is not None and np.isfinite(value)
    }


def plot_shortcut_audit(shortcut_audit: dict[str, Any]) -> Figure:
    """One figure: left, test accuracy with its interval of the null models, the model on unchanged
    smears and under each counterfactual, against the chance rate; right, the share of Grad-CAM
    evidence in each region per class, beside the share of the image each region covers."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1.6, 1]})
    bars = [(f"null: {name.replace('_', ' ')}", block, "tab:grey") for name, block in
            shortcut_audit["null_models"].items()]  # fmt: skip
    counterfactuals = shortcut_audit["counterfactuals"]
    bars += [
        (
            f"model: {name.replace('_', ' ')}",
            counterfactuals[name],
            "tab:blue" if name == "unchanged" else "tab:orange",
        )
        for name in ("unchanged", *COUNTERFACTUALS)
        if name in counterfactuals
    ]
    values = np.array([block.get("accuracy") or 0.0 for _, block, _ in bars])
    intervals = [
        block.get("interval") or [value, value] for value, (_, block, _) in zip(values, bars, strict=True)
    ]
    low = [value - interval[0] for value, interval in zip(values, intervals, strict=True)]
    high = [interval[1] - value for value, interval in zip(values, intervals, strict=True)]
    positions = np.arange(len(bars))
    left.barh(positions, values, xerr=[low, high], color=[colour for _, _, colour in bars], capsize=3)
    for position, value, interval in zip(positions, values, intervals, strict=True):
        left.text(min(interval[1] + 0.015, 0.95), position, f"{value:.3f}", va="center", fontsize=8)
    chance = shortcut_audit["chance"]["majority_class"]
    if chance is not None:
        left.axvline(chance, color="black", linestyle=":", label=f"commonest class ({chance:.2f})")
        left.legend(loc="lower left", fontsize=8)
    left.set_yticks(positions, [name for name, _, _ in bars], fontsize=8)
    left.invert_yaxis()
    left.set_xlim(0, 1.05)
    left.set_xlabel("test accuracy (95% bootstrap interval)")
    left.set_title(
        f"Null models ({shortcut_audit['test_images']} test images) and counterfactuals "
        f"({counterfactuals['images']} images)",
        fontsize=9,
    )
    attention = shortcut_audit["attention"]
    if attention.get("available"):
        groups = {"all": attention["all"], **attention["per_class"]}
        bottom = np.zeros(len(groups))
        for region, colour in zip(REGIONS, ("tab:purple", "tab:red", "tab:olive"), strict=True):
            share = np.array([group["share"][region] or 0.0 for group in groups.values()])
            right.bar(list(groups), share, bottom=bottom, color=colour, label=region.replace("_", " "))
            bottom += share
        area = [group["area"]["blast_mask"] or 0.0 for group in groups.values()]
        right.scatter(
            list(groups), area, color="white", edgecolor="black", zorder=3, label="blast mask's area"
        )
        right.set_ylim(0, 1)
        right.set_ylabel("share of Grad-CAM evidence")
        right.legend(fontsize=7, loc="lower right")
        right.set_title("Where the model looks (per true class)", fontsize=9)
    else:
        right.set_axis_off()
        right.text(0.5, 0.5, attention.get("reason", "Grad-CAM not available"), ha="center", va="center")
    figure.suptitle("Shortcut audit: what the model's accuracy rests on", fontsize=11)
    figure.tight_layout()
    return figure
