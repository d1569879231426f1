"""The paper's network: a frozen ImageNet VGG16 base, then a small convolutional head, in Keras 3 only.

Nothing here calls TensorFlow directly, so the same model runs under `KERAS_BACKEND=jax`. The saved
model takes images as stored by preprocessing (0-255, 3 or 6 channels) and returns class probabilities.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import keras
import numpy as np

from all_detection.core.choices import BASE_OUTPUT, INPUT_SCALINGS, TTA_MODES, VGG16_BLOCKS
from all_detection.core.stain import StainNormalisation
from all_detection.layout import CLASSES

logger = logging.getLogger(__name__)

# VGG16's ImageNet weights were trained on BGR images with these channel means subtracted ("caffe" mode).
IMAGENET_BGR_MEANS = (103.939, 116.779, 123.68)
#: The symmetries of the square: 4 quarter turns, each also mirrored.
DIHEDRAL_SYMMETRIES = 8


class BaseWeightsError(RuntimeError):
    """The VGG16 base weights asked for cannot be had; the message says how to pass others."""


@keras.saving.register_keras_serializable(package="all_detection")
class InputScaling(keras.layers.Layer):
    """0-255 RGB pixels to what the base expects: `imagenet` (BGR minus ImageNet means, what VGG16's
    weights were trained on) or `unit` (the paper's rescale by 1/255)."""

    def __init__(self, scaling: str = "imagenet", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if scaling not in INPUT_SCALINGS:
            raise ValueError(f"model.input_scaling must be one of {INPUT_SCALINGS}, not {scaling!r}")
        self.scaling = scaling

    def call(self, images):
        if self.scaling == "unit":
            return images / 255.0
        return keras.ops.flip(images, axis=-1) - keras.ops.convert_to_tensor(
            IMAGENET_BGR_MEANS, self.compute_dtype
        )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scaling": self.scaling}


@keras.saving.register_keras_serializable(package="all_detection")
class ChannelHalf(keras.layers.Layer):
    """One half of the channels of a dual input: `half` 0 is the original, 1 the segmented copy.

    `width` channels make a half: 3 of a 6-channel dual image, or as many as one image's cached maps.
    """

    def __init__(self, half: int = 0, width: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.half, self.width = half, width

    def call(self, images):
        return images[..., self.width * self.half : self.width * (self.half + 1)]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "half": self.half, "width": self.width}


@keras.saving.register_keras_serializable(package="all_detection")
class DihedralView(keras.layers.Layer):
    """One of the 8 symmetries of the square: `turns` quarter turns (0-3), then a left-right mirror
    when `mirror`. Exact on pixels (no interpolation), and a smear has no up, down, left or right."""

    def __init__(self, turns: int = 0, mirror: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.turns, self.mirror = turns, mirror

    @classmethod
    def of_symmetry(cls, number: int, **kwargs: Any) -> DihedralView:
        """Symmetry `number` of the 8: quarter turns `number % 4`, mirrored when `number >= 4` (0 is the
        image itself), the numbering of the training views and of test-time augmentation alike."""
        if not 0 <= number < DIHEDRAL_SYMMETRIES:
            raise ValueError(f"a square has {DIHEDRAL_SYMMETRIES} symmetries, numbered 0-7, not {number}")
        return cls(number % 4, number >= 4, **kwargs)

    def call(self, images):
        views = keras.ops.rot90(images, k=self.turns, axes=(1, 2)) if self.turns else images
        return keras.ops.flip(views, axis=2) if self.mirror else views

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "turns": self.turns, "mirror": self.mirror}


def build_base(
    image_size: int, base_weights: str | None, random_fallback: bool = False
) -> tuple[keras.Model, dict]:
    """ImageNet VGG16 without its top, frozen, with where its weights came from.

    `base_weights` is `imagenet` (Keras downloads them once into ~/.keras), a path to a Keras VGG16
    notop `.h5` file, or None for random initialisation. When the weights cannot be had, a
    `BaseWeightsError` says how to pass others; with `random_fallback` (the demo environment only) the
    base stays randomly initialised instead, with a loud warning that the returned provenance records.
    """
    provenance = {"requested": str(base_weights), "used": str(base_weights), "warning": None}
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(image_size, image_size, 3))
    try:
        _load_weights(base, base_weights)
    except BaseWeightsError as error:
        if not random_fallback:
            raise
        provenance.update(used="None", warning=f"{error} Falling back to random initialisation (demo only).")
        logger.warning("%s\n%s\n%s", "!" * 72, provenance["warning"], "!" * 72)
    base.trainable = False
    return base, provenance


_HOW_TO = (
    'Pass a local copy with --params "model.base_weights=/path/to/'
    'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", or "model.base_weights=null" to start from '
    "random weights (far less accurate)."
)


def _load_weights(base: keras.Model, base_weights: str | None) -> None:
    if base_weights in (None, "null", "None"):
        return
    if base_weights == "imagenet":
        try:
            # Downloads once into ~/.keras/models and reuses that copy afterwards.
            path = keras.utils.get_file(
                "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
                "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                cache_subdir="models",
                file_hash="6d6bbae143d832006294945121d1f1fc",
            )
        except Exception as error:  # offline, proxy and TLS failures all look different
            raise BaseWeightsError(
                f"Could not download the ImageNet VGG16 weights ({error}). {_HOW_TO}"
            ) from None
    else:
        path = Path(base_weights).expanduser()
        if not path.is_file():
            raise BaseWeightsError(f"VGG16 weights file '{path}' does not exist. {_HOW_TO}")
    try:
        base.load_weights(path)
    except Exception as error:  # h5py and Keras raise many kinds for a wrong file
        raise BaseWeightsError(
            f"'{path}' is not a Keras VGG16 notop weights file ({type(error).__name__}: {error}). {_HOW_TO}"
        ) from None


def base_layer_names(base: keras.Model) -> list[str]:
    """VGG16's layers in order, input first: where `training.cache_at` may cut it."""
    return [layer.name for layer in base.layers]


def _layers_above(base: keras.Model, cache_at: str) -> list[keras.layers.Layer]:
    names = base_layer_names(base)
    if cache_at not in names[1:]:
        raise ValueError(f"training.cache_at must be one of VGG16's layers {names[1:]}, not {cache_at!r}")
    return base.layers[names.index(cache_at) + 1 :]


def build_feature_extractor(
    base: keras.Model,
    channels: int,
    input_scaling: str,
    cache_at: str = BASE_OUTPUT,
    stain_reference: dict[str, Any] | None = None,
) -> keras.Model:
    """Images (0-255, 3 channels, or 6 for dual) to the frozen maps of VGG16 at `cache_at`.

    `cache_at` is the layer whose output is cached: the base's output (`block5_pool`) freezes all of
    VGG16; a layer inside it (`block5_conv2`, `block4_pool`...) leaves the layers above to
    `build_base_above`, which trains them. A dual image's two halves go through the same layers and
    their maps are concatenated. With a `stain_reference` (`core.stain.stain_reference` of the
    training images) every image is first given that stain (`StainNormalisation`), so the saved model
    normalises whatever it is given.
    """
    _layers_above(base, cache_at)
    below = base if cache_at == BASE_OUTPUT else keras.Model(base.input, base.get_layer(cache_at).output)
    size = base.input_shape[1]
    images = keras.Input((size, size, channels), name="images")
    pixels = images
    if stain_reference is not None:
        pixels = StainNormalisation(
            stain_reference["lab_mean"], stain_reference["lab_sd"], name="stain_normalisation"
        )(images)
    halves = [pixels] if channels == 3 else [ChannelHalf(half)(pixels) for half in (0, 1)]
    maps = [below(InputScaling(input_scaling)(half), training=False) for half in halves]
    joined = maps[0] if len(maps) == 1 else keras.layers.Concatenate(name="dual_features")(maps)
    return keras.Model(images, joined, name="feature_extractor")


def build_base_above(
    base: keras.Model, cache_at: str, map_shape: tuple[int, ...], halves: int
) -> keras.Model | None:
    """VGG16's layers above `cache_at`, from the cached maps to the base's output features; None when
    the cut is the base's output.

    The layers are VGG16's own (same weights), trainable: training them on cached maps is exactly
    fine-tuning the top of the network, since nothing below the cut would change. A dual input's two
    halves of the maps pass through the same layers, as its two images passed through the same base.
    """
    above = _layers_above(base, cache_at)
    if not above:
        return None
    maps = keras.Input(map_shape, name="cached_maps")
    width = map_shape[-1] // halves
    parts = [maps] if halves == 1 else [ChannelHalf(half, width)(maps) for half in range(halves)]
    outputs = []
    for part in parts:
        x = part
        for layer in above:
            x = layer(x)
        outputs.append(x)
    joined = outputs[0] if len(outputs) == 1 else keras.layers.Concatenate(name="dual_features")(outputs)
    network = keras.Model(maps, joined, name="base_above_cut")
    network.trainable = True
    return network


def build_head(feature_shape: tuple[int, ...], head: dict[str, Any]) -> keras.Model:
    """The paper's head: three 3x3 'same' ReLU convolutions each with 'same' max-pooling, flatten, two
    dense blocks (Dense ReLU, BatchNorm, Dropout), and a softmax over the classes.

    'same' pooling lets the 7x7 map of a 224 image survive three poolings (7, 4, 2, 1).
    """
    features = keras.Input(feature_shape, name="base_features")
    x = features
    for filters in head["conv_filters"]:
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D(2, padding="same")(x)
    x = keras.layers.Flatten()(x)
    for units, dropout in zip(head["dense_units"], head["dropout"], strict=True):
        x = keras.layers.Dense(units, activation="relu")(x)
        x = keras.layers.BatchNormalization(momentum=head["batch_norm_momentum"])(x)
        x = keras.layers.Dropout(dropout)(x)
    # float32 probabilities even under mixed precision, so the loss stays stable.
    probabilities = keras.layers.Dense(len(CLASSES), activation="softmax", dtype="float32", name="stage")(x)
    return keras.Model(features, probabilities, name="head")


def assemble_classifier(
    feature_extractor: keras.Model,
    head: keras.Model,
    augmenter: keras.Model | None = None,
    base_above: keras.Model | None = None,
) -> keras.Model:
    """Images to class probabilities: optional on-the-fly augmentation, the frozen base up to the cut,
    the base's layers above the cut (if any), the head."""
    images = keras.Input(feature_extractor.input_shape[1:], name="images")
    x = feature_extractor(augmenter(images) if augmenter is not None else images)
    if base_above is not None:
        x = base_above(x)
    return keras.Model(images, head(x), name="all_classifier")


def with_test_time_augmentation(classifier: keras.Model, tta: str) -> keras.Model:
    """The classifier itself (`none`) or one that averages its probabilities over the 8 dihedral views
    of each image (`dihedral`: 4 quarter turns, each also mirrored).

    The views are exact, so a classifier that ignores orientation gives the same answer either way. The
    averaging lives inside the returned model, so the saved model, inference and MLflow serving all
    apply what evaluation measured.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"evaluation.tta must be one of {TTA_MODES}, not {tta!r}")
    if tta == "none":
        return classifier
    images = keras.Input(classifier.input_shape[1:], name="images")
    views = [
        classifier(DihedralView.of_symmetry(number, name=f"symmetry_{number}")(images))
        for number in range(DIHEDRAL_SYMMETRIES)
    ]
    return keras.Model(images, keras.layers.Average(name="dihedral_mean")(views), name="classifier_with_tta")


def inner_classifier(model: keras.Model) -> keras.Model:
    """The classifier inside a test-time-augmented model (the model itself otherwise): Grad-CAM needs
    one view's gradients."""
    try:
        return model.get_layer("all_classifier")
    except ValueError:
        return model


def vgg16_layers(classifier: keras.Model) -> list[keras.layers.Layer]:
    """VGG16's layers in a trained classifier, in forward order, wherever the cut put them: the frozen
    part inside the feature extractor, then the part above the cut. A test-time-augmented model's
    classifier is searched."""
    classifier = inner_classifier(classifier)
    parts = [
        layer for layer in classifier.get_layer("feature_extractor").layers if isinstance(layer, keras.Model)
    ]
    parts += [layer for layer in classifier.layers if layer.name == "base_above_cut"]
    return [layer for part in parts for layer in part.layers if layer.name.startswith("block")]


def gradcam_layers(model: keras.Model) -> dict[str, Any]:
    """What Grad-CAM needs of a trained classifier (the inner one of a test-time-augmented model): the
    feature extractor's `stain_normalisation` layers (none or one) and `input_scaling`, VGG16's layers
    up to its last convolution, `block5_conv3` (whose maps, 14x14 at 224 px, Grad-CAM weighs), and
    above it, and the `head` with its output layer `stage`, whose kernel gives the scores before softmax.
    """
    classifier = inner_classifier(model)
    extractor, head = classifier.get_layer("feature_extractor"), classifier.get_layer("head")
    layers = vgg16_layers(classifier)
    cut = [layer.name for layer in layers].index("block5_conv3") + 1
    return {
        "stain_normalisation": [layer for layer in extractor.layers if isinstance(layer, StainNormalisation)],
        "input_scaling": next(layer for layer in extractor.layers if isinstance(layer, InputScaling)),
        "to_last_conv": layers[:cut],
        "above_last_conv": layers[cut:],
        "head": head,
        "stage": head.get_layer("stage"),
    }


def unfreeze_last_blocks(base: keras.Model, blocks: int) -> list[str]:
    """Make the last `blocks` of VGG16's five convolutional blocks trainable; returns their layer names."""
    if not 0 <= blocks <= VGG16_BLOCKS:
        raise ValueError(f"training.fine_tune_blocks must be 0-{VGG16_BLOCKS}, not {blocks}")
    chosen = {f"block{number}" for number in range(VGG16_BLOCKS - blocks + 1, VGG16_BLOCKS + 1)}
    base.trainable = blocks > 0
    names = []
    for layer in base.layers:
        layer.trainable = layer.name.split("_")[0] in chosen
        if layer.trainable and layer.weights:
            names.append(layer.name)
    return names


def base_gflop_per_image(image_size: int) -> float:
    """VGG16 notop forward cost: 15.47 GFLOP at 224x224, scaling with the pixel count."""
    return 15.47 * (image_size / 224) ** 2


def one_hot(label_index: np.ndarray) -> np.ndarray:
    return np.eye(len(CLASSES), dtype=np.float32)[np.asarray(label_index, dtype=np.int64)]
