"""The accuracy levers (where VGG16 is cut and fine-tuned, the training views, class weights, test-time
augmentation) measured by stratified group k-fold cross-validation on one real dataset, at a fraction of
the cost of running `kedro run --pipeline cross_validation` once per setting.

VGG16 up to `block4_pool` (the training pipeline's `build_feature_extractor` cut there) runs once over
every usable image's 8 exact symmetries and its random views (the paper's transforms,
`augmentation.multiplier`), and the maps are kept on disk as float16. Each setting then costs only the
layers above its cut and the head, built as the training pipeline builds them (`build_base_above`,
`build_head`): the folds are the cross_validation pipeline's (`assign_folds`, validation rows as its
`fold_splits` picks them), training is the pipeline's own (`fit_cached`: head, then fine-tuning above
the cut, early stopping, class weights), and test-time augmentation averages the predictions over a
test image's 8 cached symmetries, which is what the saved model computes from the images.

From the project root, once the images are prepared (`kedro run --pipeline preprocessing --params
"dataset.root=/path/to/ALL"`):

    python benchmarks/accuracy_levers.py cache --weights /path/to/vgg16_..._notop.h5   # 25 min, 1628 images
    python benchmarks/accuracy_levers.py run frozen                                     # today's recipe
    python benchmarks/accuracy_levers.py run frozen_dihedral_views --views dihedral+random
    python benchmarks/accuracy_levers.py run fine_tuned --cut block5_conv2 --views dihedral+random
    python benchmarks/accuracy_levers.py table

Each run appends one JSON line to `benchmarks/results/levers.jsonl`: per fold and across folds, test
accuracy, per-class recall and the detection view (evaluation's `all_detection.metrics`), without and
with test-time augmentation.
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
from all_detection.core.augmenter import count_views, plan_views, render_views
from all_detection.core.hardware import hardware_setup, sized_for_device
from all_detection.core.model import (
    DIHEDRAL_SYMMETRIES,
    DihedralView,
    base_layer_names,
    build_base,
    build_base_above,
    build_feature_extractor,
    build_head,
    one_hot,
)
from all_detection.core.training import fit_cached
from all_detection.layout import CLASSES
from all_detection.metrics import accuracy, detection_scores, per_class_scores
from all_detection.studies.cross_validation.nodes import assign_folds, fold_splits
from all_detection.studies.nodes import pooled_images, pooled_index

PROJECT = Path(__file__).resolve().parents[1]
STACKS = PROJECT / "data" / "03_primary"
CACHE = PROJECT / "data" / "04_feature" / "levers"
RESULTS = Path(__file__).parent / "results" / "levers.jsonl"
CACHED_AT = "block4_pool"
BATCH = 16


def parameters() -> dict[str, Any]:
    """The project's base parameters through Kedro's config loader, as `kedro run` sees them."""
    return project_parameters(PROJECT, "base")


def cache(weights: str) -> None:
    """block4_pool maps of every usable image's 8 symmetries and of its random views, float16 on disk."""
    index = pooled_index(
        *(pd.read_parquet(STACKS / f"{split}_index.parquet") for split in ("train", "val", "test"))
    )
    images = pooled_images(
        *(np.load(STACKS / f"{split}_images.npy", mmap_mode="r") for split in ("train", "val", "test"))
    )
    CACHE.mkdir(parents=True, exist_ok=True)
    index.to_parquet(CACHE / "index.parquet")
    (CACHE / "cache.json").write_text(json.dumps({"image_size": int(images.shape[1]), "weights": weights}))
    params = parameters()
    seed = params["split"]["seed"]
    plan = plan_views(index, {**params["augmentation"], "dihedral_views": False}, seed)
    plan = plan[plan["view"] > 0].reset_index(drop=True)
    views = render_views(images, plan, params["augmentation"], seed)
    plan.to_parquet(CACHE / "random_views.parquet")
    base, _ = build_base(images.shape[1], weights)
    # The training pipeline's feature extractor, cut at block4_pool.
    extractor = build_feature_extractor(base, images.shape[-1], params["model"]["input_scaling"], CACHED_AT)

    def extract(name: str, count: int, batch_of) -> None:
        maps = np.lib.format.open_memmap(
            CACHE / f"{name}.npy", "w+", np.float16, (count, *extractor.output_shape[1:])
        )
        started = time.perf_counter()
        for start in range(0, count, BATCH):
            batch = np.asarray(batch_of(start, min(count, start + BATCH)), dtype=np.float32)
            maps[start : start + len(batch)] = keras.ops.convert_to_numpy(extractor(batch, training=False))
        maps.flush()
        print(f"{name}: {count} images in {time.perf_counter() - started:.0f} s", flush=True)

    for number in range(DIHEDRAL_SYMMETRIES):
        turn = DihedralView.of_symmetry(number)
        extract(
            f"symmetry_{number}",
            len(images),
            lambda a, b, turn=turn: turn(np.asarray(images[a:b], np.float32)),
        )
    extract("random_views", len(views), lambda a, b: views[a:b])


def at_cut(name: str, cut: str, base: keras.Model) -> np.ndarray:
    """The cached maps carried from block4_pool up to `cut` by VGG16's frozen layers, cached in turn."""
    path = CACHE / f"{name}_at_{cut}.npy"
    maps = np.load(CACHE / f"{name}.npy", mmap_mode="r")
    if cut == CACHED_AT:
        return maps
    if not path.exists():
        names = base_layer_names(base)
        chain = base.layers[names.index(CACHED_AT) + 1 : names.index(cut) + 1]
        inputs = keras.Input(maps.shape[1:])
        x = inputs
        for layer in chain:
            x = layer(x)
        frozen = keras.Model(inputs, x)
        out = np.lib.format.open_memmap(path, "w+", np.float16, (len(maps), *frozen.output_shape[1:]))
        for start in range(0, len(maps), 64):
            out[start : start + 64] = keras.ops.convert_to_numpy(
                frozen(np.asarray(maps[start : start + 64], np.float32))
            )
        out.flush()
    return np.load(path, mmap_mode="r")


def training_views(
    train_rows: np.ndarray,
    labels: np.ndarray,
    symmetries: list[np.ndarray],
    random_views: np.ndarray,
    random_sources: np.ndarray,
    views: str,
    index: pd.DataFrame,
    augmentation: dict[str, Any],
    seed: int,
) -> tuple[np.ndarray, pd.Series]:
    """The fold's training maps: each image itself, with `dihedral` its 7 other symmetries, with
    `random` its random views, as augmentation would render them; with `sampled`, as many views as
    the multiplier gives (`count_views`), each image itself and then a seeded draw of its other
    symmetries, all distinct (multipliers up to 8)."""
    if views == "sampled":
        fold_labels = index["label"].iloc[train_rows].reset_index(drop=True)
        counts = count_views(fold_labels, augmentation["multiplier"], augmentation["balance"], seed)
        if counts.max() > DIHEDRAL_SYMMETRIES:
            raise ValueError("sampled views cover multipliers up to 8")
        rng = np.random.default_rng(seed)
        rows, numbers = [], []
        for row, count in zip(train_rows, counts, strict=True):
            rows += [row] * count
            numbers += [0, *(rng.permutation(DIHEDRAL_SYMMETRIES - 1)[: count - 1] + 1)]
        rows, numbers = np.array(rows), np.array(numbers)
        maps = np.empty((len(rows), *symmetries[0].shape[1:]), dtype=symmetries[0].dtype)
        for number in range(DIHEDRAL_SYMMETRIES):
            chosen = np.flatnonzero(numbers == number)
            maps[chosen] = symmetries[number][rows[chosen]]
        return maps, pd.Series(labels[rows])
    parts, part_labels = [symmetries[0][train_rows]], [labels[train_rows]]
    if "dihedral" in views:
        parts += [symmetries[number][train_rows] for number in range(1, DIHEDRAL_SYMMETRIES)]
        part_labels += [labels[train_rows]] * (DIHEDRAL_SYMMETRIES - 1)
    if "random" in views:
        chosen = np.flatnonzero(np.isin(random_sources, train_rows))
        parts.append(random_views[chosen])
        part_labels.append(labels[random_sources[chosen]])
    return np.concatenate(parts), pd.Series(np.concatenate(part_labels))


def scores(probabilities: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Accuracy, each class's recall and the detection view, as evaluation's metrics.json gives them."""
    predicted = probabilities.argmax(axis=1)
    per_class, detection = per_class_scores(truth, predicted), detection_scores(truth, predicted)
    return {
        "accuracy": accuracy(truth, predicted),
        "recall": {label: per_class[label]["recall"] for label in CLASSES},
        "sensitivity": detection["sensitivity"],
        "specificity": detection["specificity"],
    }


def run(name: str, settings: argparse.Namespace) -> dict[str, Any]:
    params = parameters()
    seed, k = params["split"]["seed"], settings.folds
    training = {**params["training"], "cache_at": settings.cut, "class_weight": settings.class_weight,
                "fine_tune_epochs": settings.fine_tune_epochs, "batch_size": settings.batch_size}  # fmt: skip
    index = pd.read_parquet(CACHE / "index.parquet")
    folds = assign_folds(index, index.iloc[:0], index.iloc[:0], {"folds": k}, seed)
    labels = index["label_index"].to_numpy()
    random_sources = pd.read_parquet(CACHE / "random_views.parquet")["source_row"].to_numpy()
    image_size = json.loads((CACHE / "cache.json").read_text())["image_size"]
    records = []
    with hardware_setup(training, seed):
        # Learning rates scaled to the batch size as the pipeline scales them (learning_rate_scaling).
        training = sized_for_device(training, image_size)
        base, _ = build_base(image_size, settings.weights)
        symmetries = [
            at_cut(f"symmetry_{number}", settings.cut, base) for number in range(DIHEDRAL_SYMMETRIES)
        ]
        random_views = at_cut("random_views", settings.cut, base)
        for fold, assigned in enumerate(fold_splits(folds, params["split"]), start=1):
            test_rows, val_rows, train_rows = (
                np.flatnonzero(assigned["split"] == split) for split in ("test", "val", "train")
            )
            train_maps, view_labels = training_views(
                train_rows, labels, symmetries, random_views, random_sources, settings.views, index,
                params["augmentation"], seed,
            )  # fmt: skip
            started, ensemble = time.perf_counter(), []
            for member in range(settings.ensemble):
                keras.utils.set_random_seed(seed + member)
                # A fresh VGG16 each time: fine-tuning changes its layers above the cut in place.
                pristine, _ = build_base(image_size, settings.weights)
                base_above = build_base_above(pristine, settings.cut, train_maps.shape[1:], 1)
                features = train_maps.shape[1:] if base_above is None else base_above.output_shape[1:]
                head = build_head(features, params["model"]["head"])
                history = fit_cached(head, base_above, train_maps, symmetries[0][val_rows], view_labels,
                                        one_hot(labels[val_rows]), training, seed + member)  # fmt: skip
                top = head if base_above is None else keras.Sequential([base_above, head])
                ensemble.append(
                    [top.predict(maps[test_rows], batch_size=64, verbose=0) for maps in symmetries]
                )
            probabilities = np.mean(ensemble, axis=0)  # symmetries x test images x classes
            record = {
                "fold": fold, "n": len(test_rows), "train_views": len(train_maps),
                "epochs": history["phase"].value_counts().to_dict(),
                "seconds": round(time.perf_counter() - started, 1),
                "none": scores(probabilities[0], labels[test_rows]),
                "dihedral": scores(probabilities.mean(axis=0), labels[test_rows]),
            }  # fmt: skip
            print(json.dumps(record), flush=True)
            records.append(record)
    summary = summarise(name, settings, records)
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as file:
        file.write(json.dumps(summary) + "\n")
    return summary


def summarise(name: str, settings: argparse.Namespace, records: list[dict[str, Any]]) -> dict[str, Any]:
    kept = {key: value for key, value in vars(settings).items() if key not in ("weights", "command", "name")}
    summary: dict[str, Any] = {"name": name, "settings": kept}
    for tta in ("none", "dihedral"):
        accuracy = np.array([record[tta]["accuracy"] for record in records])
        summary[tta] = {
            "accuracy_mean": round(float(accuracy.mean()), 4),
            "accuracy_sd": round(float(accuracy.std(ddof=1)), 4),
            "accuracy_min": round(float(accuracy.min()), 4),
            "recall_mean": {
                label: round(float(np.mean([record[tta]["recall"][label] for record in records])), 4)
                for label in CLASSES
            },
            "sensitivity_mean": round(float(np.mean([record[tta]["sensitivity"] for record in records])), 4),
            "specificity_mean": round(float(np.mean([record[tta]["specificity"] for record in records])), 4),
        }
    summary["seconds_per_fold"] = round(float(np.mean([record["seconds"] for record in records])), 1)
    summary["folds"] = records
    return summary


def table() -> None:
    print("| setting | TTA | CV accuracy mean ± SD (min) | Benign recall | sensitivity / specificity |")
    print("| --- | --- | --- | ---: | --- |")
    for line in RESULTS.read_text().splitlines():
        summary = json.loads(line)
        for tta in ("none", "dihedral"):
            block = summary[tta]
            print(f"| {summary['name']} | {tta} | {block['accuracy_mean']:.4f} ± {block['accuracy_sd']:.4f} "
                  f"({block['accuracy_min']:.4f}) | {block['recall_mean']['Benign']:.3f} | "
                  f"{block['sensitivity_mean']:.3f} / {block['specificity_mean']:.3f} |")  # fmt: skip


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cached = commands.add_parser("cache")
    cached.add_argument("--weights", required=True)
    measured = commands.add_parser("run")
    measured.add_argument("name")
    measured.add_argument(
        "--weights",
        default=str(PROJECT.parent / "shared/weights/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    )
    measured.add_argument("--cut", default="block5_pool", help="training.cache_at")
    measured.add_argument("--views", default="random", help="random, dihedral, dihedral+random or sampled")
    measured.add_argument("--fine-tune-epochs", type=int, default=0)
    measured.add_argument("--class-weight", default="none")
    measured.add_argument("--ensemble", type=int, default=1)
    measured.add_argument("--batch-size", type=int, default=32, help="training.batch_size")
    measured.add_argument("--folds", type=int, default=5)
    commands.add_parser("table")
    settings = parser.parse_args(argv)
    if settings.command == "cache":
        cache(settings.weights)
    elif settings.command == "run":
        print(json.dumps(run(settings.name, settings)))
    else:
        table()


if __name__ == "__main__":
    main(sys.argv[1:])
