"""Speed and memory of the project on this machine, against the paper's way and the machine's own limit.

Run from the project root: `python benchmarks/run.py` (about 20 minutes on 2 CPU cores, most of it the
real-shape memory run) or `python benchmarks/run.py --quick` (a CI-sized smoke run, under 3 minutes).
Everything is measured in one run, so the ratios compare like with like; absolute figures depend on
the machine. The last line printed is one JSON object, also written to `benchmarks/results/`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
from kedro.pipeline import Pipeline
from kedro_datasets.pandas import ParquetDataset
from kedro_datasets.pickle import PickleDataset
from PIL import Image

from all_detection.configuration import project_parameters
from all_detection.core.hardware import describe_device, sized_for_device
from all_detection.core.model import (
    assemble_classifier,
    base_gflop_per_image,
    build_base,
    build_feature_extractor,
    build_head,
    one_hot,
)
from all_detection.core.training import extract_features
from all_detection.datasets import ImageFolderDataset, KerasModelDataset, NumpyArrayDataset
from all_detection.layout import CLASSES
from all_detection.offline import run_in_process
from all_detection.pipelines import augmentation, ingestion, preprocessing
from all_detection.pipelines.inference.nodes import scan_inference_folder, score_images
from all_detection.pipelines.training.nodes import cache_base_features, fit_online
from all_detection.synthetic import render_smear, write_synthetic_dataset

SPLIT_STACKS = ["train_images", "train_index", "val_images", "val_index"]
PROJECT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
CONF = PROJECT / "conf" / "base"
# The real dataset: 3256 images in four classes (Benign 504, Early 985, Pre 963, Pro 804).
REAL_IMAGES = 3256


def parameters() -> dict[str, Any]:
    """The project's base parameters, as `kedro run` would see them (Kedro's config loader, the
    project's settings)."""
    return project_parameters(PROJECT, "base")


def run_stages(
    pipeline: Pipeline, params: dict[str, Any], folder: Path, outputs: list[str]
) -> dict[str, Any]:
    """`pipeline` run in process (`run_in_process`) with `params` and the `outputs` saved as the catalog
    saves them, as .npy stacks and Parquet indices in `folder` (others, such as the stain reference,
    pickled there: the runner releases a memory dataset once its last consumer has run); those outputs,
    loaded back."""
    saved = {}
    for name in outputs:
        if name.endswith("_index"):
            saved[name] = ParquetDataset(filepath=str(folder / f"{name}.parquet"))
        elif name.endswith("_images"):
            saved[name] = NumpyArrayDataset(str(folder / f"{name}.npy"))
        else:
            saved[name] = PickleDataset(filepath=str(folder / f"{name}.pkl"))
    data = {"raw_images": ImageFolderDataset(params["dataset"]["root"]), **saved}
    return run_in_process(pipeline, params, data, outputs)


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory (Linux reports kilobytes)."""
    return resource.getrusage(who).ru_maxrss / 1024


def matmul_gflops(size: int, repeats: int) -> float:
    """This machine's fp32 matmul peak through TensorFlow: the best of several large square products."""
    import tensorflow as tf  # noqa: PLC0415 - the peak is TensorFlow's, whatever Keras' backend

    first, second = tf.random.normal((size, size)), tf.random.normal((size, size))
    tf.matmul(first, second).numpy()
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        tf.matmul(first, second).numpy()
        best = max(best, 2 * size**3 / (time.perf_counter() - started) / 1e9)
    return best


def synthetic_stack(count: int, size: int, seed: int) -> np.ndarray:
    """`count` synthetic smears at `size`, as uint8, classes in turn."""
    rng = np.random.default_rng(seed)
    return np.stack([render_smear(CLASSES[number % 4], rng, size)[0] for number in range(count)])


def measure_features(images: np.ndarray, weights: str | None, batch_size: int) -> dict[str, float]:
    """The project's feature-caching code (`extract_features`) over `images`, after one warm-up batch."""
    base, _ = build_base(images.shape[1], weights, random_fallback=True)
    extractor = build_feature_extractor(base, 3, "imagenet")
    extract_features(extractor, images[:batch_size], batch_size, "float16")
    started = time.perf_counter()
    extract_features(extractor, images, batch_size, "float16")
    seconds = time.perf_counter() - started
    return {
        "images_per_s": len(images) / seconds,
        "gflop_per_s": len(images) * base_gflop_per_image(images.shape[1]) / seconds,
    }


def prepared_splits(root: Path, per_class: int, image_size: int, params: dict[str, Any]) -> dict[str, Any]:
    """A synthetic dataset run through the project's ingestion, preprocessing and augmentation pipelines."""
    write_synthetic_dataset(root, per_class=per_class, image_size=224, seed=params["split"]["seed"])
    parameters = {
        **params,
        "dataset": {"root": str(root)},
        "preprocessing": {**params["preprocessing"], "image_size": image_size},
    }
    stages = ingestion.create_pipeline() + preprocessing.create_pipeline() + augmentation.create_pipeline()
    made = run_stages(
        stages,
        parameters,
        root.parent / "stages",
        [*SPLIT_STACKS, "test_images", "augmented_train_images", "augmented_train_index", "stain_reference"],
    )
    return {
        "stain": made["stain_reference"],
        "train": (made["train_images"], made["train_index"]),
        "val": (made["val_images"], made["val_index"]),
        "test": made["test_images"],
        "views": (made["augmented_train_images"], made["augmented_train_index"]),
    }


def naive_against_cached(
    splits: dict[str, Any], params: dict[str, Any], weights: str | None, epochs: int
) -> dict:
    """The same head, epochs and views trained the paper's way (the frozen base recomputed every epoch by
    `model.fit` on images) and the project's way (`cache_base_features` once, then the head alone)."""
    (views, view_index), (val, val_index) = splits["views"], splits["val"]
    seed, batch_size, head_params = (
        params["split"]["seed"],
        sized_for_device(params["training"], views.shape[1])["batch_size"],
        params["model"]["head"],
    )
    y_views, y_val = one_hot(view_index["label_index"]), one_hot(val_index["label_index"])
    fit = {"epochs": epochs, "batch_size": batch_size, "shuffle": True, "verbose": 0}
    model_params = {**params["model"], "base_weights": weights, "random_weights_fallback": True}

    keras.utils.set_random_seed(seed)
    base, _ = build_base(views.shape[1], weights, random_fallback=True)
    extractor = build_feature_extractor(base, views.shape[-1], "imagenet")
    paper_model = assemble_classifier(extractor, build_head(extractor.output_shape[1:], head_params))
    paper_model.compile(optimizer=keras.optimizers.Adam(params["training"]["learning_rate"]),
                        loss="categorical_crossentropy", metrics=["accuracy"])  # fmt: skip
    images, val_images = np.asarray(views, np.float32), np.asarray(val, np.float32)
    started = time.perf_counter()
    naive = paper_model.fit(images, y_views, validation_data=(val_images, y_val), **fit)
    naive_seconds = time.perf_counter() - started

    started = time.perf_counter()
    train_features, val_features, _, _ = cache_base_features(
        views, val, val[:0], splits["stain"], model_params, params["preprocessing"], params["training"], seed
    )
    keras.utils.set_random_seed(seed)
    head = build_head(train_features.shape[1:], head_params)
    head.compile(optimizer=keras.optimizers.Adam(params["training"]["learning_rate"]),
                 loss="categorical_crossentropy", metrics=["accuracy"])  # fmt: skip
    cached = head.fit(
        np.asarray(train_features), y_views, validation_data=(np.asarray(val_features), y_val), **fit
    )
    cached_seconds = time.perf_counter() - started
    return {
        "naive_s": round(naive_seconds, 2),
        "cached_s": round(cached_seconds, 2),
        "speedup": round(naive_seconds / cached_seconds, 2),
        "naive_val_accuracy": round(max(naive.history["val_accuracy"]), 4),
        "cached_val_accuracy": round(max(cached.history["val_accuracy"]), 4),
        "speedup_setting": f"{len(views)} views and {len(val)} validation images at {views.shape[1]} px, "
        f"{epochs} epochs, batch {batch_size}, synthetic smears",
    }


def online_throughput(splits: dict[str, Any], params: dict[str, Any], weights: str | None) -> float:
    """Images per second of online training (augmentation on the fly, frozen base), second epoch."""
    (train, train_index), (val, val_index) = splits["train"], splits["val"]
    training = {**params["training"], "mode": "online", "epochs": 2, "early_stopping_patience": 5}
    model_params = {**params["model"], "base_weights": weights, "random_weights_fallback": True}
    _, history, _ = fit_online(train, train_index, val, val_index, splits["stain"], model_params,
                               params["preprocessing"], params["augmentation"], training,
                               params["split"]["seed"])  # fmt: skip
    return len(train) / float(history["epoch_seconds"].iloc[-1])


def inference_throughput(folder: Path, count: int, params: dict[str, Any], weights: str | None) -> float:
    """Images per second of the inference nodes end to end (scan, decode, prepare, predict) over JPEGs."""
    size = params["preprocessing"]["image_size"]
    for number, image in enumerate(synthetic_stack(count, 224, seed=3)):
        Image.fromarray(image).save(folder / f"smear-{number:05d}.jpg", quality=90)
    base, _ = build_base(size, weights, random_fallback=True)
    extractor = build_feature_extractor(base, 3, "imagenet")
    model = KerasModelDataset(str(folder.parent / "model.keras"))
    head = build_head(extractor.output_shape[1:], params["model"]["head"])
    model.save(assemble_classifier(extractor, head))
    classifier, images = model.load(), ImageFolderDataset(str(folder)).load()
    settings = [params["inference"], params["preprocessing"], params["ingestion"]]
    score_images(scan_inference_folder(images, params["ingestion"])[:4], images, classifier, *settings)
    started = time.perf_counter()
    files = scan_inference_folder(images, params["ingestion"])
    predictions = score_images(files, images, classifier, *settings)
    seconds = time.perf_counter() - started
    assert (predictions["status"] == "ok").all()
    return count / seconds


def cached_pipeline_peak_rss(
    work: Path, per_class: int, image_size: int, epochs: int, weights: str | None
) -> dict:
    """Peak memory of `kedro run` of the cached-mode pipelines (ingestion to training) in a fresh process."""
    root = work / "ALL"
    write_synthetic_dataset(root, per_class=per_class, image_size=224, seed=7)
    project = work / "project"
    (project / "src").mkdir(parents=True)
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(PROJECT / name, project)
    shutil.copytree(CONF, project / "conf" / "base")
    (project / "conf" / "local").mkdir()
    overrides = f"dataset.root={root},preprocessing.image_size={image_size},training.epochs={epochs}"
    overrides += f",model.base_weights={weights or 'null'}"
    kedro = Path(sys.executable).with_name("kedro")
    started = time.perf_counter()
    pipelines = "ingestion,preprocessing,augmentation,training"
    subprocess.run(
        [str(kedro), "run", "--pipelines", pipelines, "--params", overrides],
        cwd=project, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PATH": f"{kedro.parent}{os.pathsep}{os.environ['PATH']}"},
    )  # fmt: skip
    return {
        "peak_rss_mb": round(peak_rss_mb(resource.RUSAGE_CHILDREN), 1),
        "peak_rss_setting": f"{4 * per_class} images at {image_size} px, multiplier 4.3, {epochs} epochs",
        "cached_pipeline_s": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a CI-sized smoke run, under three minutes")
    parser.add_argument(
        "--weights",
        default=None,
        help="VGG16 notop .h5: costs are the same with random weights, accuracies not",
    )
    args = parser.parse_args()
    params = parameters()
    size = 64 if args.quick else params["preprocessing"]["image_size"]
    params["preprocessing"]["image_size"] = size
    weights = args.weights
    if args.quick:
        scale = {"matmul": 1024, "features": 32, "per_class": 8, "speed_size": 32, "epochs": 3}
        scale |= {"inference": 16, "rss_per_class": 6, "rss_size": 32, "rss_epochs": 2}
    else:
        scale = {"matmul": 4096, "features": 160, "per_class": 40, "speed_size": 64, "epochs": 25}
        scale |= {"inference": 320, "rss_per_class": REAL_IMAGES // 4, "rss_size": 224, "rss_epochs": 25}

    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {describe_device()}, Python {platform.python_version()}",
        "mode": "quick" if args.quick else "full",
        "keras_backend": keras.backend.backend(),
        "image_size": size,
        "base_weights": weights or "random (same cost)",
    }
    result["matmul_gflops"] = round(matmul_gflops(scale["matmul"], repeats=5), 1)
    features = measure_features(synthetic_stack(scale["features"], size, seed=1), weights,
                                sized_for_device(params["training"], size)["feature_batch_size"])  # fmt: skip
    result["features_img_per_s"] = round(features["images_per_s"], 2)
    result["features_gflops"] = round(features["gflop_per_s"], 1)
    result["features_pct_of_peak"] = round(100 * features["gflop_per_s"] / result["matmul_gflops"], 1)

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        splits = prepared_splits(work / "speed", scale["per_class"], scale["speed_size"], params)
        result.update(naive_against_cached(splits, params, weights, scale["epochs"]))
        result["online_img_per_s"] = round(online_throughput(splits, params, weights), 2)
        result["online_setting"] = (
            f"{len(splits['train'][0])} images at {scale['speed_size']} px, augmented on the fly"
        )
        (work / "jpegs").mkdir()
        inference_rate = inference_throughput(work / "jpegs", scale["inference"], params, weights)
        result["inference_img_per_s"] = round(inference_rate, 2)
        result["inference_pct_of_features"] = round(100 * inference_rate / features["images_per_s"], 1)
        (work / "memory").mkdir()
        result.update(cached_pipeline_peak_rss(work / "memory", scale["rss_per_class"], scale["rss_size"],
                                               scale["rss_epochs"], weights))  # fmt: skip

    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"{stamp}-{result['mode']}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
