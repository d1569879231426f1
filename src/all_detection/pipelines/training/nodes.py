"""Training: the paper's model, fitted either on cached base features (fast) or on images (online).

The base is frozen and the views are fixed, so in `cached` mode the expensive VGG16 forward pass runs
once per image instead of once per image per epoch; the head then trains on stored feature maps, the
same optimisation problem as the paper's. `online` mode feeds images through base and head with
augmentation on the fly, the only mode that can fine-tune the base.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import keras
import numpy as np
import pandas as pd

from all_detection.core.choices import BASE_OUTPUT
from all_detection.core.hardware import hardware_setup, sized_for_device
from all_detection.core.model import (
    assemble_classifier,
    base_gflop_per_image,
    build_base,
    build_base_above,
    build_feature_extractor,
    build_head,
    one_hot,
)
from all_detection.core.training import extract_features, fit_cached
from all_detection.core.training import fit_online as fit_online_images
from all_detection.image_io import ImageFolder
from all_detection.layout import images_per_input, whole_images
from all_detection.shortcuts import colour_signature, fit_colour_range

logger = logging.getLogger(__name__)


def normalised_stain(preprocessing: dict[str, Any], stain_reference: dict[str, Any]) -> dict[str, Any] | None:
    """The stain the model gives every image (the training images', `stain_reference`) when
    `preprocessing.stain_normalisation` is `reinhard`; None when it leaves stains as they are."""
    return stain_reference if preprocessing["stain_normalisation"] == "reinhard" else None


def cache_base_features(
    augmented_train_images: np.ndarray,
    val_images: np.ndarray,
    test_images: np.ndarray,
    stain_reference: dict[str, Any],
    model_settings: dict[str, Any],
    preprocessing: dict[str, Any],
    training: dict[str, Any],
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Run the frozen base once over every training view and every validation and test image.

    The base runs up to `training.cache_at`, VGG16's output by default, or a layer inside it whose
    output is cached so that the layers above it can be fine-tuned on the cached maps; with stain
    normalisation (`normalised_stain`) every image is first given the training images' stain. Returns the
    three feature stacks (`training.feature_dtype`, float16 by default: half the memory,
    well within the precision of post-ReLU activations) and a record of the work: images, seconds,
    images/s and GFLOP/s. Only `cached` training runs it (`online` computes features every epoch).
    """
    with hardware_setup(training, seed) as hardware:
        training = sized_for_device(training, augmented_train_images.shape[1])
        base, _ = build_base(
            augmented_train_images.shape[1],
            model_settings["base_weights"],
            model_settings["random_weights_fallback"],
        )
        extractor = build_feature_extractor(
            base,
            augmented_train_images.shape[-1],
            model_settings["input_scaling"],
            training["cache_at"],
            normalised_stain(preprocessing, stain_reference),
        )
        started = time.perf_counter()
        stacks = [
            extract_features(extractor, images, training["feature_batch_size"], training["feature_dtype"])
            for images in (augmented_train_images, val_images, test_images)
        ]
        seconds = time.perf_counter() - started
    count = sum(len(images) for images in (augmented_train_images, val_images, test_images))
    passes = count * images_per_input(augmented_train_images.shape[-1])
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
        "feature_batch_size": training["feature_batch_size"],
        "stain_normalisation": preprocessing["stain_normalisation"],
    }
    logger.info(
        "Cached base features of %d images in %.1f s (%.1f images/s)", count, seconds, count / seconds
    )
    return (*stacks, record)


def fit_head(
    train_features: np.ndarray,
    val_features: np.ndarray,
    augmented_train_index: pd.DataFrame,
    val_images: np.ndarray,
    val_index: pd.DataFrame,
    feature_cache: dict[str, Any],
    stain_reference: dict[str, Any],
    model_settings: dict[str, Any],
    preprocessing: dict[str, Any],
    training: dict[str, Any],
    seed: int,
) -> tuple[keras.Model, pd.DataFrame, dict[str, Any]]:
    """`cached` training: fit the paper's head on the cached features of the augmented views (rows of
    `augmented_train_index`), then fine-tune what the cut unfreezes; return the whole model.

    With `training.cache_at` inside VGG16, the frozen layers above the cut first turn the cached maps
    into the base's features once, the head trains on those, and then the layers above the cut train
    together with the head on the cached maps for `fine_tune_epochs` at `fine_tune_learning_rate`:
    fine-tuning the top of VGG16 at the cost of those few layers. The validation images give only the
    model's input shape. See `_fitted` for what every mode shares and returns.
    """

    def fit(networks: _Networks, training: dict[str, Any]) -> pd.DataFrame:
        return fit_cached(networks.head, networks.base_above, train_features, val_features,
                          augmented_train_index["label_index"], one_hot(val_index["label_index"]),
                          training, seed)  # fmt: skip

    stain = normalised_stain(preprocessing, stain_reference)
    return _fitted("cached", fit, val_images, feature_cache, stain, model_settings, training, seed)


def fit_online(
    train_images: np.ndarray,
    train_index: pd.DataFrame,
    val_images: np.ndarray,
    val_index: pd.DataFrame,
    stain_reference: dict[str, Any],
    model_settings: dict[str, Any],
    preprocessing: dict[str, Any],
    augmentation: dict[str, Any],
    training: dict[str, Any],
    seed: int,
) -> tuple[keras.Model, pd.DataFrame, dict[str, Any]]:
    """`online` training: base and head train on the training images, augmented on the fly each epoch
    by the same `build_augmenter` the offline views came from (a random stain around `stain_reference`
    with `augmentation.transforms.stain`); then, with `training.fine_tune_blocks: N`, the last N VGG16
    blocks are unfrozen and trained on at `fine_tune_learning_rate`. Nothing is cached, so the whole of
    VGG16 runs every epoch. See `_fitted` for what every mode shares and returns.
    """

    def fit(networks: _Networks, training: dict[str, Any]) -> pd.DataFrame:
        return fit_online_images(networks.extractor, networks.base, networks.head, train_images, train_index,
                                 val_images, one_hot(val_index["label_index"]), augmentation, training,
                                 seed, stain_reference)  # fmt: skip

    stain = normalised_stain(preprocessing, stain_reference)
    return _fitted("online", fit, val_images, {"mode": "online"}, stain, model_settings, training, seed)


class _Networks(NamedTuple):
    """The parts a training mode fits: VGG16, the frozen part below the cut (`extractor`), the layers
    above it that fine-tune (`base_above`, or None), and the paper's head."""

    base: keras.Model
    extractor: keras.Model
    base_above: keras.Model | None
    head: keras.Model


def _fitted(
    mode: str,
    fit: Callable[[_Networks, dict[str, Any]], pd.DataFrame],
    val_images: np.ndarray,
    feature_cache: dict[str, Any],
    stain: dict[str, Any] | None,
    model_settings: dict[str, Any],
    training: dict[str, Any],
    seed: int,
) -> tuple[keras.Model, pd.DataFrame, dict[str, Any]]:
    """What both training modes share: the networks built for the device, the fit, the assembled model
    (which gives every image the `stain` first, when normalising).

    Every phase stops early on validation loss, restoring the best weights, and lowers the learning
    rate on plateaus; `training.class_weight: balanced` weighs each class's images inversely to their
    number. The returned model takes images (0-255), never features, and carries no augmentation.
    Also returns the per-epoch history and a summary of the run, which includes `feature_cache`, the
    record `cache_base_features` kept of its work.
    """
    with hardware_setup(training, seed) as hardware:
        image_size, channels = val_images.shape[1], val_images.shape[-1]
        training = sized_for_device(training, image_size)
        base, provenance = build_base(
            image_size, model_settings["base_weights"], model_settings["random_weights_fallback"]
        )
        # Online training feeds images through all of VGG16, so nothing is cut.
        cache_at = training["cache_at"] if mode == "cached" else BASE_OUTPUT
        extractor = build_feature_extractor(base, channels, model_settings["input_scaling"], cache_at, stain)
        base_above = build_base_above(base, cache_at, extractor.output_shape[1:], images_per_input(channels))
        head = build_head((base_above or extractor).output_shape[1:], model_settings["head"])
        started = time.perf_counter()
        history = fit(_Networks(base, extractor, base_above, head), training)
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
        "replicas": hardware["replicas"],
        "base_weights": provenance,
        "cache_at": cache_at,
        "stain_normalisation": "none" if stain is None else "reinhard",
        "stain_reference": stain,
        "fine_tuned_layers": tuned,
        "class_weight": training["class_weight"],
        "batch_size": training["batch_size"],
        "learning_rate": training["learning_rate"],
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


def describe_colour_range(
    train_index: pd.DataFrame,
    val_index: pd.DataFrame,
    raw_images: ImageFolder,
    preprocessing: dict[str, Any],
    ingestion: dict[str, Any],
    shortcut_audit: dict[str, Any],
) -> dict[str, Any]:
    """The colour range of the images the model learnt from (training and validation, as found, not
    their augmented views), which travels with the registered model: an image whose colour lies beyond
    it (`shortcuts.colour_distance` above `limit`) is unlike all of them, which the smear page says
    beside its answer. Measured at the model's image size; `limit` is the
    `shortcut_audit.colour_range_quantile` of the images' out-of-fold distances (`fit_colour_range`)."""
    size = preprocessing["image_size"]
    paths = pd.concat([whole_images(train_index)["path"], whole_images(val_index)["path"]])
    signature = partial(colour_signature, image_size=size)
    rows = raw_images.read_each(paths, ingestion, "images' colour", signature)
    colour_range = fit_colour_range(np.stack(rows), shortcut_audit["colour_range_quantile"], size)
    logger.info(
        "Colour range of %d training and validation images: %.0f%% lie within distance %.2f out of fold",
        colour_range["images"], 100 * colour_range["quantile"], colour_range["limit"] or float("nan"),
    )  # fmt: skip
    return colour_range
