"""The stain-robustness levers measured by 5-fold stratified group cross-validation on one real dataset:
each recipe's test accuracy on unchanged smears, under one pooled stain and under a stain swap (the
shortcut audit's counterfactuals), the worst of the three choosing the default.

VGG16 runs once per input over every usable image's 8 exact symmetries (the training views and the
test-time views of the default recipe), and once over each fold's audited test images under each
counterfactual; the maps are kept on disk as float16. Each recipe then trains only the head per fold,
with the training pipeline's own `fit_cached`, on the folds of the `cross_validation` pipeline
(`assign_folds`, `fold_splits`), and the counterfactuals are the audit's own (`choose_audit_sample`,
`counterfactual_smears`, `model_inputs`).

Inputs (what the network is given):
  original   the images as they are
  reinhard   every image normalised to one stain in the model (`StainNormalisation`)
  randstain  views 1-7 of each image given a random stain (`RandomStain`, strength 1); view 0 as it is
  corners    the corner squares painted out (`preprocessing.corners`)

The stain reference is measured on all usable images, not on each fold's training images; the fold
references differ from it by a fraction of a LAB unit (printed by `cache`), far below the differences
between classes.

From the project root, once the images are prepared (`kedro run --pipeline preprocessing --params
"dataset.root=/path/to/ALL"`):

    python benchmarks/shortcut_levers.py cache original --root /path/to/ALL --weights /path/to/notop.h5
    python benchmarks/shortcut_levers.py counterfactuals original --root ... --weights ...
    python benchmarks/shortcut_levers.py run baseline --views original
    python benchmarks/shortcut_levers.py run stain_normalised --views reinhard
    python benchmarks/shortcut_levers.py run stain_augmented --views original --jittered randstain
    python benchmarks/shortcut_levers.py nulls --root /path/to/ALL
    python benchmarks/shortcut_levers.py table

Each run appends one JSON line to `benchmarks/results/shortcut_levers.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from all_detection.configuration import project_parameters
from all_detection.core.hardware import hardware_setup, sized_for_device
from all_detection.core.model import (
    DIHEDRAL_SYMMETRIES,
    DihedralView,
    build_base,
    build_feature_extractor,
    build_head,
    one_hot,
)
from all_detection.core.stain import RandomStain, stain_reference
from all_detection.core.training import extract_features, fit_cached
from all_detection.image_io import ImageFolder
from all_detection.layout import CLASSES
from all_detection.pipelines.shortcut_audit.nodes import (
    choose_audit_sample,
    counterfactual_smears,
    fit_null_models,
    model_inputs,
)
from all_detection.shortcuts import paint_corners
from all_detection.studies.cross_validation.nodes import assign_folds, fold_splits
from all_detection.studies.nodes import pooled_images, pooled_index

PROJECT = Path(__file__).resolve().parents[1]
STACKS = PROJECT / "data" / "03_primary"
CACHE = PROJECT / "data" / "04_feature" / "shortcut_levers"
RESULTS = Path(__file__).parent / "results" / "shortcut_levers.jsonl"
STAINED = ("pooled_stain", "stain_swap")
BATCH = 16


def parameters() -> dict[str, Any]:
    return project_parameters(PROJECT, "base")


def dev_images() -> tuple[pd.DataFrame, np.ndarray]:
    """Every usable image's index row and pixels, sorted by image id (the order of every cache)."""
    splits = ("train", "val", "test")
    index = pooled_index(*(pd.read_parquet(STACKS / f"{split}_index.parquet") for split in splits))
    images = pooled_images(*(np.load(STACKS / f"{split}_images.npy", mmap_mode="r") for split in splits))
    order = np.argsort(index["image_id"].to_numpy(), kind="stable")
    return index.iloc[order].reset_index(drop=True), images[order]


def extractor_for(view: str, weights: str, image_size: int, reference: dict[str, Any]) -> keras.Model:
    base, _ = build_base(image_size, weights)
    normalised = reference if view == "reinhard" else None
    return build_feature_extractor(
        base, 3, parameters()["model"]["input_scaling"], stain_reference=normalised
    )


def prepared(view: str, images: np.ndarray, reference: dict[str, Any], seed: int) -> np.ndarray:
    """The images as the input `view` gives them to the extractor (reinhard normalises inside it)."""
    if view == "corners":
        fraction = parameters()["preprocessing"]["corners"]["fraction"]
        return np.stack([paint_corners(np.asarray(image), fraction) for image in images])
    if view == "randstain":
        jitter = RandomStain(reference, 1.0, seed=seed)
        batches = (np.asarray(images[start : start + 64], np.float32) for start in range(0, len(images), 64))
        stained = [keras.ops.convert_to_numpy(jitter(batch, training=True)) for batch in batches]
        return np.concatenate(stained).round().clip(0, 255).astype(np.uint8)
    return np.asarray(images)


def cache(view: str, settings: argparse.Namespace) -> None:
    """block5_pool maps of every usable image's 8 symmetries as the input `view` gives them."""
    index, images = dev_images()
    folder = CACHE / view
    folder.mkdir(parents=True, exist_ok=True)
    index.to_parquet(folder / "index.parquet")
    reference = stain_reference(images)
    (CACHE / "stain_reference.json").write_text(json.dumps(reference))
    seed = parameters()["split"]["seed"]
    folds = fold_splits(
        assign_folds(index, index.iloc[:0], index.iloc[:0], {"folds": 5}, seed), parameters()["split"]
    )
    for number, assigned in enumerate(folds, start=1):
        own = stain_reference(images[np.flatnonzero(assigned["split"].to_numpy() == "train")])
        means = np.abs(np.subtract(own["lab_mean"], reference["lab_mean"])).max()
        spreads = np.abs(np.subtract(own["lab_sd"], reference["lab_sd"])).max()
        print(f"fold {number}: training stain differs by up to {means:.2f} (means), {spreads:.2f} (sd)")
    extractor = extractor_for(view, settings.weights, images.shape[1], reference)
    for number in range(DIHEDRAL_SYMMETRIES):
        path = folder / f"symmetry_{number}.npy"
        # The source view stays as it is in every recipe: randstain jitters views 1-7 only.
        if path.exists() or (view == "randstain" and number == 0):
            continue
        started = time.perf_counter()
        turn = DihedralView.of_symmetry(number)
        turned = np.asarray(images) if number == 0 else keras.ops.convert_to_numpy(turn(np.asarray(images)))
        pixels = prepared(view, turned.astype(np.uint8), reference, seed + number)
        np.save(path, np.asarray(extract_features(extractor, pixels, BATCH, "float16")))
        print(f"{view} symmetry {number}: {time.perf_counter() - started:.0f} s", flush=True)


def counterfactuals(view: str, settings: argparse.Namespace) -> None:
    """Per fold, the audited test images under each stain counterfactual, 8 symmetries each, through the
    input `view`'s extractor."""
    params = parameters()
    index, images = dev_images()
    reference = json.loads((CACHE / "stain_reference.json").read_text())
    seed = params["split"]["seed"]
    folds = fold_splits(
        assign_folds(index, index.iloc[:0], index.iloc[:0], {"folds": 5}, seed), params["split"]
    )
    extractor = extractor_for(view, settings.weights, images.shape[1], reference)
    raw = ImageFolder(Path(settings.root))
    audit = {**params["shortcut_audit"], "images_per_class": settings.per_class}
    for number, assigned in enumerate(folds, start=1):
        folder = CACHE / view / f"fold_{number}"
        if number not in settings.folds or (folder / "done").exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        test = index[assigned["split"].to_numpy() == "test"].reset_index()
        chosen = choose_audit_sample(test, audit, seed)
        smears = [raw.read_rgb(path, params["ingestion"]) for path in chosen["path"]]
        changed, donors = counterfactual_smears(smears, chosen["label_index"].to_numpy(), audit,
                                                params["preprocessing"], seed)  # fmt: skip
        rows = test["index"].to_numpy()[chosen["row"].to_numpy()]
        pd.DataFrame({"row": rows, "donor_label": chosen["label_index"].to_numpy()[donors]}).to_parquet(
            folder / "audited.parquet"
        )
        for name in STAINED:
            pixels = model_inputs(changed[name], params["preprocessing"])
            for symmetry in range(DIHEDRAL_SYMMETRIES):
                turned = pixels if symmetry == 0 else keras.ops.convert_to_numpy(
                    DihedralView.of_symmetry(symmetry)(pixels)).astype(np.uint8)  # fmt: skip
                np.save(folder / f"{name}_{symmetry}.npy",
                        np.asarray(extract_features(extractor, prepared(view, turned, reference, seed), BATCH,
                                                    "float16")))  # fmt: skip
        (folder / "done").touch()
        print(f"{view} fold {number}: counterfactuals of {len(chosen)} images", flush=True)


def null_models(settings: argparse.Namespace) -> None:
    """The audit's null models (`fit_null_models`) on each fold: trained on its training images, scored
    on its test images; one JSON line per cue with the accuracy per fold and its mean."""
    params = parameters()
    seed = params["split"]["seed"]
    index, _ = dev_images()
    folds = fold_splits(
        assign_folds(index, index.iloc[:0], index.iloc[:0], {"folds": 5}, seed), params["split"]
    )
    raw = ImageFolder(Path(settings.root))
    per_fold = [
        fit_null_models(
            assigned[assigned["split"] == "train"],
            assigned[assigned["split"] == "test"],
            raw,
            params["shortcut_audit"],
            params["preprocessing"],
            params["ingestion"],
            params["evaluation"],
            seed,
        )
        for assigned in folds
    ]
    for cue in per_fold[0]:
        accuracy = [fold[cue]["accuracy"] for fold in per_fold]
        summary = {"null_model": cue, "accuracy_mean": round(float(np.mean(accuracy)), 4),
                   "accuracy_sd": round(float(np.std(accuracy, ddof=1)), 4), "folds": accuracy}  # fmt: skip
        print(json.dumps(summary), flush=True)
        RESULTS.parent.mkdir(exist_ok=True)
        with (RESULTS.parent / "shortcut_null_models.jsonl").open("a") as file:
            file.write(json.dumps(summary) + "\n")


def load_views(view: str, first: int = 0) -> list[np.ndarray | None]:
    return [None] * first + [
        np.load(CACHE / view / f"symmetry_{number}.npy", mmap_mode="r") for number in range(first, 8)
    ]


def scores(probabilities: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    predicted = probabilities.argmax(axis=1)
    return {
        "accuracy": float(np.mean(predicted == truth)),
        "recall": {label: float(np.mean(predicted[truth == c] == c)) for c, label in enumerate(CLASSES)},
        "n": len(truth),
    }


def run(name: str, settings: argparse.Namespace) -> dict[str, Any]:
    params = parameters()
    seed = params["split"]["seed"]
    index, _ = dev_images()
    if settings.manifest:
        # Another ingestion's duplicate groups (overlapping fields joined, say): the folds follow them.
        groups = pd.read_parquet(settings.manifest).set_index("path")["group"]
        index = index.assign(group=index["image_id"].map(groups).to_numpy())
    labels = index["label_index"].to_numpy()
    folds = fold_splits(
        assign_folds(index, index.iloc[:0], index.iloc[:0], {"folds": 5}, seed), params["split"]
    )
    views, jittered = load_views(settings.views), load_views(settings.jittered or settings.views, first=1)
    training = {**params["training"]}
    records = []
    with hardware_setup(training, seed):
        training = sized_for_device(training, 224)
        for number, assigned in enumerate(folds, start=1):
            if number not in settings.folds:
                continue
            split = assigned["split"].to_numpy()
            train_rows, val_rows, test_rows = (
                np.flatnonzero(split == part) for part in ("train", "val", "test")
            )
            # The training views: each image itself, then its 7 other symmetries (from `jittered`).
            maps = np.concatenate([views[0][train_rows], *(jittered[k][train_rows] for k in range(1, 8))])
            view_labels = pd.Series(np.tile(labels[train_rows], 8))
            keras.utils.set_random_seed(seed)
            head = build_head(maps.shape[1:], params["model"]["head"])
            started = time.perf_counter()
            fit_cached(head, None, maps, views[0][val_rows], view_labels, one_hot(labels[val_rows]),
                       training, seed)  # fmt: skip

            folder = CACHE / settings.views / f"fold_{number}"
            record = {"fold": number, "train_views": len(maps),
                      **fold_scores(head, views, labels, test_rows, folder)}  # fmt: skip
            record["seconds"] = round(time.perf_counter() - started, 1)
            print(json.dumps(record), flush=True)
            records.append(record)
    summary = summarise(name, settings, records)
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as file:
        file.write(json.dumps(summary) + "\n")
    return summary


def dihedral_mean(head: keras.Model, stacks: list[np.ndarray]) -> np.ndarray:
    """The head's probabilities averaged over the 8 symmetries' maps: what the saved model's test-time
    augmentation computes from the images."""
    return np.mean([head.predict(stack, batch_size=256, verbose=0) for stack in stacks], axis=0)


def fold_scores(
    head: keras.Model, views: list[np.ndarray], labels: np.ndarray, test_rows: np.ndarray, folder: Path
) -> dict[str, Any]:
    """A fold's test scores: all its test images unchanged, and its audited ones unchanged and under
    each stain counterfactual (with the share of stain-swap answers that follow the donor's class)."""
    audited = pd.read_parquet(folder / "audited.parquet")
    rows = audited["row"].to_numpy()
    record: dict[str, Any] = {
        "unchanged": scores(dihedral_mean(head, [stack[test_rows] for stack in views]), labels[test_rows])
    }
    if not np.isin(rows, test_rows).all():
        # The counterfactuals were made for other folds (another grouping): they would score trained images.
        return record
    record["unchanged_audited"] = scores(dihedral_mean(head, [stack[rows] for stack in views]), labels[rows])
    for name in STAINED:
        probabilities = dihedral_mean(head, [np.load(folder / f"{name}_{k}.npy") for k in range(8)])
        record[name] = scores(probabilities, labels[rows])
    swapped = dihedral_mean(head, [np.load(folder / f"stain_swap_{k}.npy") for k in range(8)])
    record["stain_swap"]["follows_donor"] = float(np.mean(swapped.argmax(axis=1) == audited["donor_label"]))
    return record


def summarise(name: str, settings: argparse.Namespace, records: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"name": name, "views": settings.views, "jittered": settings.jittered,
                               "manifest": settings.manifest, "folds_measured": settings.folds}  # fmt: skip
    for part in ("unchanged", "unchanged_audited", *STAINED):
        if part not in records[0]:
            continue
        accuracy = np.array([record[part]["accuracy"] for record in records])
        summary[part] = {
            "accuracy_mean": round(float(accuracy.mean()), 4),
            "accuracy_sd": round(float(accuracy.std(ddof=1)), 4),
            "benign_recall": round(
                float(np.mean([record[part]["recall"]["Benign"] for record in records])), 4
            ),
            "n": int(sum(record[part]["n"] for record in records)),
        }
    if "stain_swap" in summary:
        summary["stain_swap"]["follows_donor"] = round(
            float(np.mean([record["stain_swap"]["follows_donor"] for record in records])), 4
        )
    summary["worst"] = min(
        summary[part]["accuracy_mean"] for part in ("unchanged", *STAINED) if part in summary
    )
    summary["folds"] = records
    return summary


def table() -> None:
    print("| recipe | unchanged | Benign recall | pooled stain | stain swap | follows donor | worst |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for line in RESULTS.read_text().splitlines():
        s = json.loads(line)
        unchanged = s["unchanged"]
        print(f"| {s['name']} | {unchanged['accuracy_mean']:.4f} ± {unchanged['accuracy_sd']:.4f} | "
              f"{unchanged['benign_recall']:.3f} | {s['pooled_stain']['accuracy_mean']:.4f} | "
              f"{s['stain_swap']['accuracy_mean']:.4f} | {s['stain_swap']['follows_donor']:.3f} | "
              f"{s['worst']:.4f} |")  # fmt: skip


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    default_weights = str(PROJECT.parent / "shared/weights/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    for command in ("cache", "counterfactuals"):
        sub = commands.add_parser(command)
        sub.add_argument("view", choices=["original", "reinhard", "randstain", "corners"])
        sub.add_argument("--weights", default=default_weights)
        sub.add_argument("--root", default=str(PROJECT.parent / "shared/all2021-dev"))
        sub.add_argument("--per-class", type=int, default=25, help="audited test images per class and fold")
    for sub in (commands.choices["counterfactuals"], measured := commands.add_parser("run")):
        sub.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="the folds to measure")
    measured.add_argument("name")
    measured.add_argument("--views", default="original", help="the input of view 0, the tests and validation")
    measured.add_argument(
        "--jittered", default=None, help="the input of training views 1-7 (default: --views)"
    )
    measured.add_argument(
        "--manifest", default=None, help="a manifest.parquet whose duplicate groups to fold by"
    )
    nulls = commands.add_parser("nulls")
    nulls.add_argument("--root", default=str(PROJECT.parent / "shared/all2021-dev"))
    commands.add_parser("table")
    settings = parser.parse_args(argv)
    if settings.command == "cache":
        cache(settings.view, settings)
    elif settings.command == "counterfactuals":
        counterfactuals(settings.view, settings)
    elif settings.command == "run":
        print(json.dumps(run(settings.name, settings)))
    elif settings.command == "nulls":
        null_models(settings)
    else:
        table()


if __name__ == "__main__":
    main(sys.argv[1:])
