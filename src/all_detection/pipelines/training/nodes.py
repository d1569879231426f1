"""Training: the paper's model, fitted either on cached base features (fast) or on images (online).

The base is frozen and the views are fixed, so in `cached` mode the expensive VGG16 forward pass runs
once per image instead of once per image per epoch; the head then trains on stored feature maps, the
same optimisation problem as the paper's. `online` mode feeds images through base and head with
augmentation on the fly, the only mode that can fine-tune the base.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import pandas as pd

from all_detection.datasets import release_pages
from all_detection.model import (
    assemble_classifier,
    base_gflop_per_image,
    build_base,
    build_feature_extractor,
    build_head,
    one_hot,
    unfreeze_last_blocks,
)
from all_detection.pipelines.augmentation.nodes import build_augmenter
from all_detection.progress import Progress

logger = logging.getLogger(__name__)

TRAINING_MODES = ("cached", "online")


def visible_gpus() -> list[str]:
    """Names of the GPUs the Keras backend can use; empty on a CPU-only machine."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415 - only the TensorFlow backend has it to ask

        return [device.name for device in tf.config.list_physical_devices("GPU")]
    if backend == "jax":
        import jax  # noqa: PLC0415

        return [str(device) for device in jax.devices() if device.platform == "gpu"]
    return []


def describe_device() -> str:
    gpus = visible_gpus()
    return f"GPU x{len(gpus)} ({', '.join(gpus)})" if gpus else f"CPU ({os.cpu_count()} cores)"


@contextlib.contextmanager
def hardware_setup(training: dict[str, Any], seed: int) -> Iterator[dict[str, Any]]:
    """Seed everything, choose precision and distribution, and restore the global policy afterwards.

    `training.mixed_precision: auto` turns float16 compute on only where a GPU is visible;
    `training.distribution: auto` mirrors the model over all visible GPUs when there are two or more,
    and `multi_worker` over several machines (TensorFlow backend). On the CPU, TensorFlow's ops are
    made deterministic, so two runs with the same `split.seed` give the same model.
    """
    gpus = visible_gpus()
    precision, distribution = training["mixed_precision"], training["distribution"]
    mixed = precision == "on" or (precision == "auto" and bool(gpus))
    mirrored = distribution == "mirrored" or (distribution == "auto" and len(gpus) > 1)
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow" and not gpus:
        import tensorflow as tf  # noqa: PLC0415

        tf.config.experimental.enable_op_determinism()
    previous_policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    scope = contextlib.nullcontext()
    if keras.backend.backend() == "tensorflow" and (mirrored or distribution == "multi_worker"):
        import tensorflow as tf  # noqa: PLC0415

        # Every worker of a multi-worker run executes the same command, told its role by TF_CONFIG.
        strategy = tf.distribute.MultiWorkerMirroredStrategy() if distribution == "multi_worker" else None
        scope = (strategy or tf.distribute.MirroredStrategy()).scope()
    try:
        with scope:
            used = "multi_worker" if distribution == "multi_worker" else "mirrored" if mirrored else "none"
            yield {"device": describe_device(), "mixed_precision": mixed, "distribution": used}
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def extract_features(extractor: keras.Model, images: np.ndarray, batch_size: int, dtype: str) -> np.ndarray:
    """The frozen base's feature maps of every image, batch by batch into one preallocated array."""
    features = np.empty((len(images), *extractor.output_shape[1:]), dtype=dtype)
    progress = Progress(logger, "base features", len(images))
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size], dtype=np.float32)
        features[start : start + len(batch)] = keras.ops.convert_to_numpy(extractor(batch, training=False))
        release_pages(images)
        progress.advance(len(batch))
    return features


def cache_base_features(
    augmented_train_images: np.ndarray,
    val_images: np.ndarray,
    test_images: np.ndarray,
    model: dict[str, Any],
    training: dict[str, Any],
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Run the frozen base once over every training view and every validation and test image.

    Returns the three feature stacks (`training.feature_dtype`, float16 by default: half the memory,
    well within the precision of post-ReLU activations) and a record of the work: images, seconds,
    images/s and GFLOP/s. In `online` mode nothing is computed and empty stacks are returned.
    """
    if _mode(training) == "online":
        logger.info("Online training: base features are computed every epoch, none are cached")
        empty = np.zeros((0,), dtype=training["feature_dtype"])
        return empty, empty, empty, {"mode": "online"}
    with hardware_setup(training, seed) as hardware:
        base, _ = build_base(
            augmented_train_images.shape[1], model["base_weights"], model["random_weights_fallback"]
        )
        extractor = build_feature_extractor(base, augmented_train_images.shape[-1], model["input_scaling"])
        started = time.perf_counter()
        stacks = [
            extract_features(extractor, images, training["feature_batch_size"], training["feature_dtype"])
            for images in (augmented_train_images, val_images, test_images)
        ]
        seconds = time.perf_counter() - started
    count = sum(len(images) for images in (augmented_train_images, val_images, test_images))
    passes = count * (2 if augmented_train_images.shape[-1] == 6 else 1)
    record = {
        "mode": "cached",
        "device": hardware["device"],
        "images": count,
        "seconds": round(seconds, 2),
        "images_per_s": round(count / seconds, 2),
        "gflop_per_s": round(passes * base_gflop_per_image(augmented_train_images.shape[1]) / seconds, 1),
        "feature_shape": list(stacks[0].shape[1:]),
        "feature_dtype": training["feature_dtype"],
    }
    logger.info(
        "Cached base features of %d images in %.1f s (%.1f images/s)", count, seconds, count / seconds
    )
    return (*stacks, record)


def _mode(training: dict[str, Any]) -> str:
    if training["mode"] not in TRAINING_MODES:
        raise ValueError(f"training.mode must be one of {TRAINING_MODES}, not {training['mode']!r}")
    return training["mode"]


class ArrayBatches(keras.utils.PyDataset):
    """Batches of (float32 inputs, one-hot labels) from a memory-mapped stack, reshuffled every epoch.

    Serves image stacks (online) and cached features alike: only a batch is ever converted to float32,
    so memory stays flat however large the stack. Worker threads prepare the next batches while the
    current one trains (prefetching).
    """

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool, seed: int, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.images, self.labels, self.batch_size, self.shuffle = images, labels, batch_size, shuffle
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(images)) if shuffle else np.arange(len(images))

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        # Sorted rows read the memory map sequentially; the batch's order does not matter to the loss.
        rows = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        return np.asarray(self.images[rows], dtype=np.float32), self.labels[rows]

    def on_epoch_end(self) -> None:
        release_pages(self.images)
        if self.shuffle:
            self.order = self.rng.permutation(len(self.images))


class EpochRecord(keras.callbacks.Callback):
    """Adds each epoch's wall time and learning rate to the logs that `History` keeps."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self.started
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def _callbacks(training: dict[str, Any]) -> list[keras.callbacks.Callback]:
    plateau = training["reduce_lr"]
    return [
        EpochRecord(),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss",
            factor=plateau["factor"],
            patience=plateau["patience"],
            min_lr=plateau["min_lr"],
        ),
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=training["early_stopping_patience"], restore_best_weights=True
        ),
    ]


def _compile(network: keras.Model, learning_rate: float) -> None:
    network.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )


def _history_frame(history: keras.callbacks.History, phase: str, first_epoch: int) -> pd.DataFrame:
    frame = pd.DataFrame(history.history)
    frame.insert(0, "epoch", range(first_epoch + 1, first_epoch + len(frame) + 1))
    frame.insert(1, "phase", phase)
    return frame


def train_classifier(
    train_features: np.ndarray,
    val_features: np.ndarray,
    augmented_train_index: pd.DataFrame,
    train_images: np.ndarray,
    train_index: pd.DataFrame,
    val_images: np.ndarray,
    val_index: pd.DataFrame,
    feature_cache: dict[str, Any],
    model: dict[str, Any],
    augmentation: dict[str, Any],
    training: dict[str, Any],
    seed: int,
) -> tuple[keras.Model, pd.DataFrame, dict[str, Any]]:
    """Fit the paper's head (and, online, optionally the base's last blocks); return the whole model.

    `cached`: the head trains on the cached features of the augmented views (rows of
    `augmented_train_index`). `online`: base and head train on the training images, augmented on the
    fly each epoch by the same `build_augmenter` the offline views came from, then, with
    `training.fine_tune_blocks: N`, the last N VGG16 blocks are unfrozen and trained on at
    `fine_tune_learning_rate`. Both stop early on validation loss, restoring the best weights, and
    lower the learning rate on plateaus. The returned model takes images (0-255), never features, and
    carries no augmentation. Also returns the per-epoch history and a summary of the run, which
    includes `feature_cache`, the record `cache_base_features` kept of its work.
    """
    mode = _mode(training)
    with hardware_setup(training, seed) as hardware:
        image_size, channels = val_images.shape[1], val_images.shape[-1]
        base, provenance = build_base(image_size, model["base_weights"], model["random_weights_fallback"])
        extractor = build_feature_extractor(base, channels, model["input_scaling"])
        head = build_head(extractor.output_shape[1:], model["head"])
        y_val = one_hot(val_index["label_index"])
        started = time.perf_counter()
        if mode == "cached":
            _compile(head, training["learning_rate"])
            y_views = one_hot(augmented_train_index["label_index"])
            batch = training["batch_size"]
            fitted = head.fit(
                ArrayBatches(train_features, y_views, batch, shuffle=True, seed=seed),
                validation_data=ArrayBatches(val_features, y_val, batch, shuffle=False, seed=seed),
                epochs=training["epochs"],
                callbacks=_callbacks(training),
                verbose=2,
            )
            history = _history_frame(fitted, "head", 0)
        else:
            history = _train_online(extractor, base, head, train_images, train_index, val_images, y_val,
                                    augmentation, training, seed)  # fmt: skip
        seconds = time.perf_counter() - started
        classifier = assemble_classifier(extractor, head)
    best = history.loc[history["val_loss"].idxmin()]
    summary = {
        "mode": mode,
        "device": hardware["device"],
        "mixed_precision": hardware["mixed_precision"],
        "distribution": hardware["distribution"],
        "base_weights": provenance,
        "epochs_run": len(history),
        "best_epoch": int(best["epoch"]),
        "best_val_loss": round(float(best["val_loss"]), 5),
        "best_val_accuracy": round(float(best["val_accuracy"]), 5),
        "training_seconds": round(seconds, 2),
        "parameters": {"total": classifier.count_params(), "head": head.count_params()},
        "feature_cache": feature_cache,
    }
    logger.info(
        "Trained (%s) %d epochs in %.1f s; best epoch %d, val_accuracy %.4f",
        mode, len(history), seconds, summary["best_epoch"], summary["best_val_accuracy"],
    )  # fmt: skip
    return classifier, history, summary


def _train_online(
    extractor: keras.Model,
    base: keras.Model,
    head: keras.Model,
    train_images: np.ndarray,
    train_index: pd.DataFrame,
    val_images: np.ndarray,
    y_val: np.ndarray,
    augmentation: dict[str, Any],
    training: dict[str, Any],
    seed: int,
) -> pd.DataFrame:
    augmenter = build_augmenter(augmentation["transforms"], seed)
    network = assemble_classifier(extractor, head, augmenter)
    feeding = {"workers": training["workers"], "max_queue_size": 2 * training["workers"]}
    train_batches = ArrayBatches(train_images, one_hot(train_index["label_index"]), training["batch_size"],
                                 shuffle=True, seed=seed, **feeding)  # fmt: skip
    val_batches = ArrayBatches(val_images, y_val, training["batch_size"], shuffle=False, seed=seed, **feeding)
    _compile(network, training["learning_rate"])
    fitted = network.fit(train_batches, validation_data=val_batches, epochs=training["epochs"],
                         callbacks=_callbacks(training), verbose=2)  # fmt: skip
    phases = [_history_frame(fitted, "head", 0)]
    if training["fine_tune_blocks"]:
        unfrozen = unfreeze_last_blocks(base, training["fine_tune_blocks"])
        logger.info("Fine-tuning %d VGG16 layers: %s", len(unfrozen), ", ".join(unfrozen))
        _compile(network, training["fine_tune_learning_rate"])
        done = len(phases[0])
        fitted = network.fit(train_batches, validation_data=val_batches, initial_epoch=done,
                             epochs=done + training["fine_tune_epochs"], callbacks=_callbacks(training),
                             verbose=2)  # fmt: skip
        phases.append(_history_frame(fitted, "fine_tune", done))
    return pd.concat(phases, ignore_index=True)
