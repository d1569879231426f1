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

from all_detection.datasets import release_pages, scratch_array
from all_detection.model import (
    BASE_OUTPUT,
    assemble_classifier,
    base_gflop_per_image,
    build_base,
    build_base_above,
    build_feature_extractor,
    build_head,
    one_hot,
    unfreeze_last_blocks,
)
from all_detection.pipelines.augmentation.nodes import build_augmenter
from all_detection.progress import Progress

logger = logging.getLogger(__name__)

TRAINING_MODES = ("cached", "online")
CLASS_WEIGHTS = ("none", "balanced")


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
    """The frozen base's feature maps of every image, batch by batch into one preallocated array.

    The array is a `scratch_array`: maps cut inside VGG16 are four times the base output's size
    (14x14 instead of 7x7 at 224 px), so written batches leave memory instead of accumulating.
    """
    features = scratch_array((len(images), *extractor.output_shape[1:]), dtype)
    progress = Progress(logger, "base features", len(images))
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size], dtype=np.float32)
        features[start : start + len(batch)] = keras.ops.convert_to_numpy(extractor(batch, training=False))
        release_pages(images)
        release_pages(features)
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

    The base runs up to `training.cache_at`, VGG16's output by default, or a layer inside it whose
    output is cached so that the layers above it can be fine-tuned on the cached maps. Returns the
    three feature stacks (`training.feature_dtype`, float16 by default: half the memory,
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
        extractor = build_feature_extractor(
            base, augmented_train_images.shape[-1], model["input_scaling"], training["cache_at"]
        )
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
        "cache_at": training["cache_at"],
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
    """Batches of (float32 inputs, one-hot labels[, weights]) from a memory-mapped stack, reshuffled
    every epoch.

    Serves image stacks (online) and cached features alike: only a batch is ever converted to float32,
    so memory stays flat however large the stack. Worker threads prepare the next batches while the
    current one trains (prefetching). With `weights`, each row's loss weight comes with its batch.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        shuffle: bool,
        seed: int,
        weights: np.ndarray | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.images, self.labels, self.batch_size, self.shuffle = images, labels, batch_size, shuffle
        self.weights = weights
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(images)) if shuffle else np.arange(len(images))

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        # Sorted rows read the memory map sequentially; the batch's order does not matter to the loss.
        rows = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        batch = (np.asarray(self.images[rows], dtype=np.float32), self.labels[rows])
        return batch if self.weights is None else (*batch, self.weights[rows])

    def on_epoch_end(self) -> None:
        release_pages(self.images)
        if self.shuffle:
            self.order = self.rng.permutation(len(self.images))


def class_weights(label_index: np.ndarray, scheme: str) -> np.ndarray | None:
    """Each training row's loss weight: None for `none`; for `balanced`, n / (classes x n_class), so
    every class weighs as much in the loss as if the classes were equally common (mean weight 1)."""
    if scheme not in CLASS_WEIGHTS:
        raise ValueError(f"training.class_weight must be one of {CLASS_WEIGHTS}, not {scheme!r}")
    if scheme == "none":
        return None
    label_index = np.asarray(label_index, dtype=np.int64)
    present, counts = np.unique(label_index, return_counts=True)
    per_class = dict(zip(present, len(label_index) / (len(present) * counts), strict=True))
    return np.array([per_class[label] for label in label_index], dtype=np.float32)


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
    """Fit the paper's head, then fine-tune what the settings unfreeze; return the whole model.

    `cached`: the head trains on the cached features of the augmented views (rows of
    `augmented_train_index`). With `training.cache_at` inside VGG16, the frozen layers above the cut
    first turn the cached maps into the base's features once, the head trains on those, and then the
    layers above the cut train together with the head on the cached maps for `fine_tune_epochs` at
    `fine_tune_learning_rate`: fine-tuning the top of VGG16 at the cost of those few layers. `online`:
    base and head train on the training images, augmented on the fly each epoch by the same
    `build_augmenter` the offline views came from, then, with `training.fine_tune_blocks: N`, the last
    N VGG16 blocks are unfrozen and trained on at `fine_tune_learning_rate`. Every phase stops early on
    validation loss, restoring the best weights, and lowers the learning rate on plateaus;
    `training.class_weight: balanced` weighs each class's images inversely to their number. The
    returned model takes images (0-255), never features, and carries no augmentation. Also returns the
    per-epoch history and a summary of the run, which includes `feature_cache`, the record
    `cache_base_features` kept of its work.
    """
    mode = _mode(training)
    with hardware_setup(training, seed) as hardware:
        image_size, channels = val_images.shape[1], val_images.shape[-1]
        base, provenance = build_base(image_size, model["base_weights"], model["random_weights_fallback"])
        # Online training feeds images through all of VGG16, so nothing is cut.
        cache_at = training["cache_at"] if mode == "cached" else BASE_OUTPUT
        extractor = build_feature_extractor(base, channels, model["input_scaling"], cache_at)
        base_above = build_base_above(base, cache_at, extractor.output_shape[1:], 2 if channels == 6 else 1)
        head = build_head((base_above or extractor).output_shape[1:], model["head"])
        y_val = one_hot(val_index["label_index"])
        started = time.perf_counter()
        if mode == "cached":
            history = _train_cached(head, base_above, train_features, val_features,
                                    augmented_train_index["label_index"], y_val, training, seed)  # fmt: skip
        else:
            history = _train_online(extractor, base, head, train_images, train_index, val_images, y_val,
                                    augmentation, training, seed)  # fmt: skip
        seconds = time.perf_counter() - started
        classifier = assemble_classifier(extractor, head, base_above=base_above)
    best = history.loc[history["val_loss"].idxmin()]
    fine_tuned = "fine_tune" in set(history["phase"])
    tuned = [layer.name for layer in base.layers if layer.trainable and layer.weights] if fine_tuned else []
    summary = {
        "mode": mode,
        "device": hardware["device"],
        "mixed_precision": hardware["mixed_precision"],
        "distribution": hardware["distribution"],
        "base_weights": provenance,
        "cache_at": cache_at,
        "fine_tuned_layers": tuned,
        "class_weight": training["class_weight"],
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


def _above_cut_features(base_above: keras.Model, maps: np.ndarray, batch_size: int) -> np.ndarray:
    """The frozen layers above the cut over cached maps: the base's output features, float16."""
    features = np.empty((len(maps), *base_above.output_shape[1:]), dtype=np.float16)
    for start in range(0, len(maps), batch_size):
        batch = np.asarray(maps[start : start + batch_size], dtype=np.float32)
        features[start : start + len(batch)] = keras.ops.convert_to_numpy(base_above(batch, training=False))
        release_pages(maps)
    return features


def _train_cached(
    head: keras.Model,
    base_above: keras.Model | None,
    train_maps: np.ndarray,
    val_maps: np.ndarray,
    view_labels: pd.Series,
    y_val: np.ndarray,
    training: dict[str, Any],
    seed: int,
) -> pd.DataFrame:
    batch = training["batch_size"]
    y_views, weights = one_hot(view_labels), class_weights(view_labels, training["class_weight"])

    def fit(network: keras.Model, inputs: np.ndarray, val_inputs: np.ndarray, **epochs: int):
        return network.fit(
            ArrayBatches(inputs, y_views, batch, shuffle=True, seed=seed, weights=weights),
            validation_data=ArrayBatches(val_inputs, y_val, batch, shuffle=False, seed=seed),
            callbacks=_callbacks(training),
            verbose=2,
            **epochs,
        )

    _compile(head, training["learning_rate"])
    if base_above is None:
        return _history_frame(fit(head, train_maps, val_maps, epochs=training["epochs"]), "head", 0)
    # The head first learns on the frozen features above the cut, computed once; then those layers
    # train with it, at the fine-tuning rate, on the cached maps.
    base_above.trainable = False
    feature_batch = training["feature_batch_size"]
    head_inputs = [_above_cut_features(base_above, maps, feature_batch) for maps in (train_maps, val_maps)]
    phases = [_history_frame(fit(head, *head_inputs, epochs=training["epochs"]), "head", 0)]
    del head_inputs
    if training["fine_tune_epochs"]:
        base_above.trainable = True
        maps = keras.Input(train_maps.shape[1:], name="cached_maps")
        top = keras.Model(maps, head(base_above(maps)), name="top_of_classifier")
        _compile(top, training["fine_tune_learning_rate"])
        done, before = len(phases[0]), top.get_weights()
        fitted = fit(
            top, train_maps, val_maps, initial_epoch=done, epochs=done + training["fine_tune_epochs"]
        )
        phases.append(_history_frame(fitted, "fine_tune", done))
        _keep_the_better_phase(top, before, phases)
    return pd.concat(phases, ignore_index=True)


def _keep_the_better_phase(
    network: keras.Model, before: list[np.ndarray], phases: list[pd.DataFrame]
) -> None:
    """Early stopping restores the best weights within fine-tuning; when no fine-tuning epoch reached
    the head phase's lowest validation loss, put back the weights fine-tuning started from, so the
    model is always the one of the history's best epoch."""
    head_best, tuned_best = phases[0]["val_loss"].min(), phases[-1]["val_loss"].min()
    if not tuned_best < head_best:
        logger.info(
            "Fine-tuning did not lower the validation loss (%.4f against %.4f): kept the head's weights",
            tuned_best, head_best,
        )  # fmt: skip
        network.set_weights(before)


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
        done, before = len(phases[0]), network.get_weights()
        fitted = network.fit(train_batches, validation_data=val_batches, initial_epoch=done,
                             epochs=done + training["fine_tune_epochs"], callbacks=_callbacks(training),
                             verbose=2)  # fmt: skip
        phases.append(_history_frame(fitted, "fine_tune", done))
        _keep_the_better_phase(network, before, phases)
    return pd.concat(phases, ignore_index=True)
