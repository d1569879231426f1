"""The model card of a run: what it was trained on, how it was tested, what it scores and what it relies
on. `model_card_context` gathers the facts (numbers formatted, flags, lists); the template
`templates/model_card.md.j2` holds every word of the card."""

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
    """Every fact the model card states, formatted: the run's data and provenance, split protocol (from
    the leakage measured, not from intentions), model, training, test results with their bootstrap
    intervals, per-class scores, calibration and detection, and what the shortcut audit found the model
    relies on (`shortcut_audit.json`). `model_settings` is the `model` parameters
    (base weights, input scaling, head); a synthetic dataset (`dataset.synthetic`, recorded in the
    data-quality report) is said to be one."""
    test, val, run = metrics["test"], metrics["val"], metrics["run"]
    weights = training_summary["base_weights"]
    intervals = test.get("confidence_intervals", {})
    recipe = run.get("recipe", {})
    head = model_settings.get("head", {})
    dice = nested(data_quality, "segmentation_agreement", "Pro", "dice_mean")
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
        "quarantine_reasons": data_quality.get("quarantined", {}).get("by_reason", {}),
        "usable_images": _usable_images(data_quality),
        "split_table": [
            {"label": label, **{name: counts.get(name, 0) for name in ("train", "val", "test", "total")}}
            for label, counts in data_quality["images_per_class_and_split"].items()
        ],
        "split_protocol": _split_protocol(run, data_quality),
        "split_sizes": run["split_sizes"],
        "fine_tuned_layers": recipe.get("fine_tuned_layers") or [],
        "cache_at": recipe.get("cache_at"),
        "run": {
            key: run[key]
            for key in ("input_mode", "image_size", "mode", "epochs_run", "best_epoch", "device")
        },
        "class_weight": recipe.get("class_weight", "none"),
        "balanced_augmentation": bool(recipe.get("balanced_augmentation")),
        "tta": recipe.get("tta", "none"),
        "test_n": test.get("n", 0),
        "level": round(100 * intervals.get("level", 0.95)),
        "bootstrap_samples": intervals.get("bootstrap_samples", "n/a"),
        "headline": {"test": _headline(test), "val": _headline(val)},
        "intervals": {name: _interval(intervals.get(name)) for name in ("accuracy", "macro_f1")},
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
        "pro_mask_dice": None if dice is None else f"{dice:.2f}",
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


def _split_protocol(run: dict[str, Any], data_quality: dict[str, Any]) -> dict[str, Any]:
    """The split's facts as measured in this run (test images whose source image was trained on), and as
    requested (duplicate groups kept together, seed, fractions)."""
    split = data_quality.get("split", {})
    requested = split.get("requested", {})
    seen = nested(run, "leakage", "test", "fraction_same_source") or 0
    return {
        "test_images_seen": nested(run, "leakage", "test", "same_source_in_training") or 0,
        "test_images_seen_percent": f"{100 * seen:.1f}",
        "groups": {
            kind: nested(data_quality, "duplicates", f"{kind}_groups") or 0
            for kind in ("exact", "near", "overlap")
        },
        "seed": split.get("seed", "n/a"),
        "test_fraction": requested.get("test_fraction", "n/a"),
        "val_fraction": requested.get("val_fraction", "n/a"),
    }


def _headline(block: dict[str, Any]) -> dict[str, str]:
    """One split's headline scores, formatted."""
    scores = {name: block.get(name) for name in ("accuracy", "macro_f1", "weighted_f1", "cohen_kappa", "mcc")}
    scores["roc_auc"] = nested(block, "roc_auc", "macro")
    return {name: _fmt(value) for name, value in scores.items()}


def _usable_images(data_quality: dict[str, Any]) -> int:
    # The split table's total, the same count as the MLflow parameter data.usable_images.
    return sum(counts["total"] for counts in data_quality["images_per_class_and_split"].values())


def _reliance(audit: dict[str, Any], accuracy: float | None, interval: list[float] | None) -> dict[str, Any]:
    """The facts of "What this model relies on": the null models and counterfactuals as table rows, the
    strongest null model against the model, the stain swap and the Grad-CAM shares, each read off the
    audit's numbers (None where the audit lacks them)."""
    nulls = audit["null_models"]
    null_rows = [
        {"name": name, "cue": block["cue"], "accuracy": _fmt(block.get("accuracy")),
         "interval": _interval(block.get("interval"))}
        for name, block in nulls.items()
    ]  # fmt: skip
    counterfactuals = audit["counterfactuals"]
    changes = [name for name in counterfactuals if isinstance(counterfactuals[name], dict)]
    counterfactual_rows = [
        {
            "name": name,
            "change": counterfactuals[name].get("change"),
            "accuracy": _fmt(counterfactuals[name].get("accuracy")),
            "interval": _interval(counterfactuals[name].get("interval")),
            "drop": "" if name == "unchanged" else _fmt(counterfactuals[name].get("drop")),
        }
        for name in changes
    ]
    strongest_null = None
    best = max(nulls.values(), key=lambda block: block.get("accuracy") or 0)
    if accuracy is not None and best.get("accuracy") is not None:
        strongest_null = {
            "cue": best["cue"],
            "accuracy": f"{best['accuracy']:.3f}",
            "model_accuracy": f"{accuracy:.3f}",
            "model_is_clear": bool(interval and best.get("interval") and interval[0] > best["interval"][1]),
        }
    swap = counterfactuals.get("stain_swap")
    stain_swap = None
    if swap and swap.get("accuracy") is not None:
        stain_swap = {
            "accuracy": f"{swap['accuracy']:.3f}",
            "drop": _fmt(swap.get("drop")),
            "follows_donor_percent": f"{100 * (swap.get('follows_donor') or 0):.1f}",
        }
    attention = audit["attention"]
    shares = attention["all"]["share"] if attention.get("available") else None
    evidence = None
    if shares and shares["blast_mask"] is not None:
        evidence = {
            "blast_mask_percent": f"{100 * (shares['blast_mask'] or 0):.0f}",
            "blast_mask_area_percent": f"{100 * (attention['all']['area']['blast_mask'] or 0):.0f}",
            "corners_percent": f"{100 * (shares['corners'] or 0):.0f}",
        }
    return {
        "null_models": null_rows,
        "counterfactuals": counterfactual_rows,
        "audited_images": counterfactuals.get("images", 0),
        "test_images": audit.get("test_images", 0),
        "chance": _fmt((audit.get("chance") or {}).get("majority_class")),
        "strongest_null": strongest_null,
        "stain_swap": stain_swap,
        "evidence": evidence,
        "attention": None
        if shares is None
        else {
            name: {"share": _fmt(shares[name]), "area": _fmt(attention["all"]["area"][name])}
            for name in shares
        },
        "attention_note": attention.get("reason", ""),
    }
