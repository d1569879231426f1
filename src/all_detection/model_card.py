"""The model card of a run: what it was trained on, how it was tested, what it scores and what it relies
on, as `templates/model_card.md.j2` words it. `model_card_context` formats every value; the template
holds the prose."""

from __future__ import annotations

from typing import Any

import jinja2

from all_detection.layout import CLASSES, DETECTION_POSITIVE
from all_detection.metrics import nested


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _interval(pair: list[float | None] | None) -> str:
    return "n/a" if not pair or None in pair else f"{pair[0]:.3f} to {pair[1]:.3f}"


def model_card_context(
    metrics: dict[str, Any],
    training_summary: dict[str, Any],
    data_quality: dict[str, Any],
    shortcut_audit: dict[str, Any],
    model_settings: dict[str, Any],
) -> dict[str, Any]:
    """Everything the model card says, formatted: the run's data and provenance, split protocol (from
    the leakage measured, not from intentions), model, training, test results with their bootstrap
    intervals, per-class scores, calibration and detection, and what the shortcut audit found the model
    relies on (`shortcut_audit.json`). `model_settings` is the `model` parameters
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
                "test": _fmt(nested(test, "roc_auc", "macro")),
                "interval": "",
                "val": _fmt(nested(val, "roc_auc", "macro")),
            },
        ],
        "per_class": [
            {
                "label": label,
                **{name: _fmt(scores[name]) for name in ("precision", "recall", "f1", "specificity")},
                "roc_auc": _fmt(nested(test, "roc_auc", label)),
                "support": scores["support"],
            }
            for label, scores in test.get("per_class", {}).items()
        ],
        "ece_test": _fmt(test.get("ece")),
        "ece_val": _fmt(val.get("ece")),
        "detection": {
            "positive": DETECTION_POSITIVE,
            "sensitivity": _fmt(nested(test, "detection", "sensitivity")),
            "specificity": _fmt(nested(test, "detection", "specificity")),
            **{count: nested(test, "detection", count) for count in ("tp", "fn", "tn", "fp")},
        },
        "pro_agreement": _pro_agreement(data_quality),
        "reliance": _reliance(shortcut_audit, test.get("accuracy"), intervals.get("accuracy")),
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
    leaked = nested(run, "leakage", "test", "same_source_in_training") or 0
    if leaked:
        fraction = nested(run, "leakage", "test", "fraction_same_source") or 0
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
        "- Exact and near-duplicate images, and images of one field shifted, form groups that were **kept "
        f"together** in one split ({nested(data_quality, 'duplicates', 'exact_groups') or 0} exact, "
        f"{nested(data_quality, 'duplicates', 'near_groups') or 0} near-duplicate and "
        f"{nested(data_quality, 'duplicates', 'overlap_groups') or 0} overlapping-field groups).",
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
    dice = nested(data_quality, "segmentation_agreement", "Pro", "dice_mean")
    return (
        ""
        if dice is None
        else f"; the colour-threshold segmentation agrees with the dataset's Pro masks at Dice {dice:.2f}"
    )


def _reliance(audit: dict[str, Any], accuracy: float | None, interval: list[float] | None) -> dict[str, Any]:
    """The card's "What this model relies on": the null models and counterfactuals as table rows, the
    Grad-CAM shares, and plain sentences read off the numbers (never written in advance)."""
    nulls = audit["null_models"]
    null_rows = [
        {"cue": name.replace("_", " "), "what": block["cue"], "accuracy": _fmt(block.get("accuracy")),
         "interval": _interval(block.get("interval"))}
        for name, block in nulls.items()
    ]  # fmt: skip
    counterfactuals = audit["counterfactuals"]
    changes = [name for name in counterfactuals if isinstance(counterfactuals[name], dict)]
    counterfactual_rows = [
        {
            "test": name.replace("_", " "),
            "what": counterfactuals[name].get("change", "the audited images as they are"),
            "accuracy": _fmt(counterfactuals[name].get("accuracy")),
            "interval": _interval(counterfactuals[name].get("interval")),
            "drop": "" if name == "unchanged" else _fmt(counterfactuals[name].get("drop")),
        }
        for name in changes
    ]
    reading = []
    best_name, best = max(nulls.items(), key=lambda item: item[1].get("accuracy") or 0)
    if accuracy is not None and best.get("accuracy") is not None:
        clear = bool(interval and best.get("interval") and interval[0] > best["interval"][1])
        verdict = (
            "the model is above it by more than both intervals."
            if clear
            else "the model is not clear of it by both intervals, so its test accuracy alone cannot show "
            "that it reads the cells' morphology."
        )
        reading.append(
            f"A classifier that sees no cell shapes ({best['cue']}) reaches {best['accuracy']:.3f} on the "
            f"same test images, against the model's {accuracy:.3f}: {verdict}"
        )  # fmt: skip
    swap = counterfactuals.get("stain_swap")
    if swap and swap.get("accuracy") is not None:
        reading.append(
            f"Given the stain of another class's smear, the model scores {swap['accuracy']:.3f} "
            f"({_fmt(swap.get('drop'))} below the same smears unchanged) and "
            f"{100 * (swap.get('follows_donor') or 0):.1f}% of its answers name the stain's class instead."
        )
    attention = audit["attention"]
    shares = attention["all"]["share"] if attention.get("available") else None
    if shares and shares["blast_mask"] is not None:
        area = attention["all"]["area"]["blast_mask"] or 0
        reading.append(
            f"{100 * (shares['blast_mask'] or 0):.0f}% of its Grad-CAM evidence lies on the stained cells "
            f"(dilated blast mask, {100 * area:.0f}% of the image) and {100 * (shares['corners'] or 0):.0f}% "
            "in the corners."
        )
    return {
        "null_models": null_rows,
        "counterfactuals": counterfactual_rows,
        "audited_images": counterfactuals.get("images", 0),
        "test_images": audit.get("test_images", 0),
        "chance": _fmt((audit.get("chance") or {}).get("majority_class")),
        "attention": None
        if shares is None
        else {
            name: {"share": _fmt(shares[name]), "area": _fmt(attention["all"]["area"][name])}
            for name in shares
        },
        "attention_note": attention.get("reason", ""),
        "reading": reading,
        "best_null": best_name.replace("_", " "),
    }
