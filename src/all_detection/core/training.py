"""The feature pass and the training loops, on any Keras backend.

Batches travel as they are stored (uint8 images, float16 cached maps); the cast to float and the
scaling happen inside the model, on the device, in the compiled step that Keras builds for the backend
(`jax.jit` under JAX; a graph under TensorFlow, compiled by XLA where a GPU is visible).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import keras
import numpy as np
import pandas as pd

from all_detection.core.arrays import prefetched_batches, release_pages, scratch_array
from all_detection.core.augmenter import build_augmenter
from all_detection.core.choices import CLASS_WEIGHTS
from all_detection.core.hardware import batch_split, padded_predict
from all_detection.core.model import assemble_classifier, one_hot, unfreeze_last_blocks
from all_detection.core.progress import Progress

logger = logging.getLogger(__name__)


def extract_features(extractor: keras.Model, images: np.ndarray, batch_size: int, dtype: str) -> np.ndarray:
    """The frozen base's feature maps of every image, batch by batch into one preallocated array.

    Each batch goes to the device as the uint8 images it is stored as (a quarter of float32's bytes)
    through the extractor's compiled predict step (`predict_on_batch`), which casts and scales it there,
    while the next batch is read (`prefetched_batches`). The array is a `scratch_array`: maps cut inside
    VGG16 are four times the base output's size (14x14 instead of 7x7 at 224 px), so written batches leave
    memory instead of accumulating.
    """
    features = scratch_array((len(images), *extractor.output_shape[1:]), dtype)
    progress = Progress(logger, "base features", len(images))
    for start, batch in prefetched_batches(images, batch_size):
        features[start : start + len(batch)] = padded_predict(extractor, batch)
        release_pages(features)
        progress.advance(len(batch))
    return features


class ArrayBatches(keras.utils.PyDataset):
    """Batches of (inputs, one-hot labels[, weights]) from a memory-mapped stack, reshuffled every epoch.

    Serves image stacks (online) and cached features alike, in the dtype they are stored in (uint8
    images, float16 maps): the model casts them on the device, so no float32 copy is made on the host
    and a quarter (images) or half (maps) of the bytes travel. Only a batch is read at a time, so
    memory stays flat however large the stack. Worker threads prepare the next batches while the
    current one trains (prefetching). With `weights`, each row's loss weight comes with its batch.

    Under a data-parallel distribution every batch is split evenly over the devices (`batch_split()`):
    `batch_size` must be a multiple of their number, and an epoch leaves out the last
    `len(images) % devices` rows of its order (fewer than one per device). Shuffled training stacks
    leave out other rows every epoch; a validation stack always the same last ones, which are logged.
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
        replicas = batch_split()
        if batch_size % replicas:
            raise ValueError(
                f"training.batch_size {batch_size} does not split evenly over {replicas} devices: use a "
                f"multiple of {replicas} (or auto)"
            )
        self.rows = len(images) - len(images) % replicas
        if self.rows < len(images) and not shuffle:
            logger.warning(
                "%d of %d rows left out of every epoch's validation: a data-parallel batch splits evenly "
                "over %d devices", len(images) - self.rows, len(images), replicas
            )  # fmt: skip
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(images)) if shuffle else np.arange(len(images))

    def __len__(self) -> int:
        return math.ceil(self.rows / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        # Sorted rows read the memory map sequentially; the batch's order does not matter to the loss.
        end = min((index + 1) * self.batch_size, self.rows)
        rows = np.sort(self.order[index * self.batch_size : end])
        batch = (np.asarray(self.images[rows]), self.labels[rows])
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


def fit_cached(
    head: keras.Model,
    base_above: keras.Model | None,
    train_maps: np.ndarray,
    val_maps: np.ndarray,
    view_labels: pd.Series,
    y_val: np.ndarray,
    training: dict[str, Any],
    seed: int,
) -> pd.DataFrame:
    """Train the head on cached maps, then fine-tune what lies above the cut; return the history.

    With `base_above` (VGG16's layers above `training.cache_at`), the frozen layers first turn the
    cached maps into the base's features once and the head trains on those; then the layers above the
    cut train together with the head on the cached maps for `fine_tune_epochs` at
    `fine_tune_learning_rate`, kept only if they lower the validation loss. Every phase stops early on
    validation loss, restoring the best weights, and lowers the learning rate on plateaus;
    `training.class_weight: balanced` weighs each class's views inversely to their number.
    """
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
    head_inputs = [
        extract_features(base_above, maps, feature_batch, "float16") for maps in (train_maps, val_maps)
    ]
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


def fit_online(
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
    stain_reference: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Train base and head on images augmented on the fly inside the compiled step (the same
    `build_augmenter` the offline views come from, with a random stain around `stain_reference` when
    `augmentation.transforms.stain` asks for one); then, with `training.fine_tune_blocks: N`, the
    last N VGG16 blocks with the head at `fine_tune_learning_rate`, kept only if they lower the
    validation loss. Returns the history."""
    augmenter = build_augmenter(augmentation["transforms"], seed, stain_reference)
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
