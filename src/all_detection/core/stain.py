"""A smear's stain as colour statistics in CIELAB, and what the model does with it: Reinhard's transfer
of one stain onto an image (Reinhard et al. 2001), the layer that normalises every image to the
training images' stain, and the training-only layer that gives every view a stain drawn from theirs
(RandStainNA, Shen et al. 2022).

An image's stain is the mean and standard deviation of each CIELAB channel over its pixels. Two smears
of the same cells stained or photographed differently differ mostly in these six numbers, and on the
ALL dataset so do its four classes (each was most likely stained as its own batch): Reinhard's transfer
replaces them and keeps everything else, the shapes and the contrasts inside the image.

Written in `keras.ops` rather than with OpenCV or scikit-image, so that the same code runs inside the
saved model on any backend: inference, MLflow serving and the training step all normalise alike. The
colour conversion is sRGB (D65) as OpenCV's `COLOR_RGB2Lab` on float images does it; a test holds the
two together. Black pixels (the background of a segmented image) are no stain: they are left out of
the statistics and stay black.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from all_detection.layout import RGB_CHANNELS

# sRGB primaries to CIE XYZ under D65, and D65's white point: OpenCV's constants.
_XYZ_FROM_RGB = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE = np.array([0.950456, 1.0, 1.088754])
_EPSILON, _KAPPA = 0.008856, 7.787  # CIE's linear segment near black
# A channel spread below this (a flat image) is not divided by.
_MIN_SPREAD = 1e-3


def lab_from_rgb(rgb):
    """CIELAB (L 0-100, a and b about -128 to 127) of RGB pixels in 0-255, on the last axis."""
    c = keras.ops.clip(keras.ops.cast(rgb, "float32") / 255.0, 0.0, 1.0)
    linear = keras.ops.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = keras.ops.matmul(
        linear, keras.ops.convert_to_tensor((_XYZ_FROM_RGB / _WHITE[:, None]).T, "float32")
    )
    f = keras.ops.where(
        xyz > _EPSILON, keras.ops.power(keras.ops.maximum(xyz, _EPSILON), 1 / 3), _KAPPA * xyz + 16 / 116
    )
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return keras.ops.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], axis=-1)


def rgb_from_lab(lab):
    """RGB pixels in 0-255 (float, clipped to the gamut) of CIELAB values on the last axis."""
    lightness, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    fy = (lightness + 16) / 116
    f = keras.ops.stack([fy + a / 500, fy, fy - b / 200], axis=-1)
    xyz = keras.ops.where(f > 0.206893, f**3, (f - 16 / 116) / _KAPPA)
    to_rgb = np.linalg.inv(_XYZ_FROM_RGB / _WHITE[:, None]).T
    linear = keras.ops.clip(keras.ops.matmul(xyz, keras.ops.convert_to_tensor(to_rgb, "float32")), 0.0, 1.0)
    c = keras.ops.where(
        linear <= 0.0031308,
        12.92 * linear,
        1.055 * keras.ops.power(keras.ops.maximum(linear, 1e-8), 1 / 2.4) - 0.055,
    )
    return 255.0 * keras.ops.clip(c, 0.0, 1.0)


def _stained(rgb):
    """1 where a pixel holds any colour, 0 where it is black (no stain), shaped (..., h, w, 1)."""
    return keras.ops.cast(keras.ops.max(rgb, axis=-1, keepdims=True) > 0, "float32")


def _moments(lab, weight):
    count = keras.ops.maximum(keras.ops.sum(weight, axis=(-3, -2)), 1.0)
    mean = keras.ops.sum(lab * weight, axis=(-3, -2)) / count
    centred = (lab - mean[..., None, None, :]) * weight
    return mean, keras.ops.sqrt(keras.ops.sum(centred**2, axis=(-3, -2)) / count)


def stain_statistics(images) -> tuple[np.ndarray, np.ndarray]:
    """Each image's stain: the mean and standard deviation of its L, a and b over its non-black pixels.

    `images` is (n, h, w, 3) RGB in 0-255; returns two (n, 3) float64 arrays.
    """
    rgb = keras.ops.cast(images, "float32")
    mean, spread = _moments(lab_from_rgb(rgb), _stained(rgb))
    return keras.ops.convert_to_numpy(mean).astype(np.float64), keras.ops.convert_to_numpy(spread).astype(
        np.float64
    )


def transfer_stain(images, means, spreads):
    """Reinhard's transfer: each image's L, a and b standardised over its own pixels, then given the
    target `means` and standard deviations `spreads`, (3,) for one stain or (n, 3) one per image.

    `images` is (..., h, w, 3) RGB in 0-255 (any float or integer type); returns float RGB in 0-255.
    Shapes, textures and the contrasts inside the image are kept; its stain becomes the target's.
    Black pixels stay black and count for nothing.
    """
    rgb = keras.ops.cast(images, "float32")
    weight = _stained(rgb)
    lab = lab_from_rgb(rgb)
    mean, spread = _moments(lab, weight)
    means = keras.ops.convert_to_tensor(means, "float32")
    spreads = keras.ops.convert_to_tensor(spreads, "float32")
    if len(means.shape) == 1:
        means, spreads = means[None, :], spreads[None, :]
    scale = spreads / keras.ops.maximum(spread, _MIN_SPREAD)
    moved = (lab - mean[..., None, None, :]) * scale[..., None, None, :] + means[..., None, None, :]
    return rgb_from_lab(moved) * weight


def stain_reference(images, batch_size: int = 64) -> dict[str, Any]:
    """The stain of a set of images (the training split): the mean over images of each image's LAB means
    and standard deviations, the target every image is normalised to, and their spread across images,
    the range a random stain is drawn from. `images` is (n, h, w, channels) in 0-255; of a 6-channel
    (dual) stack the original half is measured. Read `batch_size` images at a time."""
    means, spreads = [], []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size])[..., :RGB_CHANNELS]
        mean, spread = stain_statistics(batch)
        means.append(mean)
        spreads.append(spread)
    means, spreads = np.concatenate(means), np.concatenate(spreads)
    return {
        "images": len(means),
        "lab_mean": means.mean(axis=0).round(4).tolist(),
        "lab_sd": spreads.mean(axis=0).round(4).tolist(),
        "lab_mean_spread": means.std(axis=0).round(4).tolist(),
        "lab_sd_spread": spreads.std(axis=0).round(4).tolist(),
    }


def _per_image(layer_call, images, channels: int):
    """Apply a 3-channel colour operation to each RGB half of a 6-channel (dual) image alike."""
    if channels == RGB_CHANNELS:
        return layer_call(images)
    halves = [images[..., start : start + RGB_CHANNELS] for start in range(0, channels, RGB_CHANNELS)]
    return keras.ops.concatenate([layer_call(half) for half in halves], axis=-1)


@keras.saving.register_keras_serializable(package="all_detection")
class StainNormalisation(keras.layers.Layer):
    """Every image given one reference stain (`lab_mean`, `lab_sd`: the training images'), by Reinhard's
    transfer, before the network sees it: the colour of a smear's staining batch carries no information
    past this layer. Part of the saved model, so inference and serving normalise as training did."""

    def __init__(self, lab_mean: list[float], lab_sd: list[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lab_mean, self.lab_sd = [float(v) for v in lab_mean], [float(v) for v in lab_sd]

    def call(self, images):
        return _per_image(
            lambda rgb: transfer_stain(rgb, self.lab_mean, self.lab_sd), images, images.shape[-1]
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "lab_mean": self.lab_mean, "lab_sd": self.lab_sd}


@keras.saving.register_keras_serializable(package="all_detection")
class RandomStain(keras.layers.Layer):
    """Training only: every image given a random stain, its LAB means and standard deviations drawn from
    normal distributions around the training images' (`reference`, from `stain_reference`) with their
    spread across images times `strength` (RandStainNA, Shen et al. 2022). Stain then tells nothing of the
    class, so the network must learn from what is stained. The two halves of a dual image get the
    same stain. Outside training (`training=False`) the images pass unchanged."""

    def __init__(self, reference: dict[str, Any], strength: float = 1.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.reference, self.strength, self.seed = dict(reference), float(strength), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training: bool = True):
        if not training:
            return images
        batch = keras.ops.shape(images)[0]

        def draw(centre: str, spread: str):
            noise = keras.random.normal((batch, RGB_CHANNELS), seed=self.seed_generator)
            centres = keras.ops.convert_to_tensor(self.reference[centre], "float32")
            spreads = keras.ops.convert_to_tensor(self.reference[spread], "float32")
            return centres + self.strength * spreads * noise

        means = draw("lab_mean", "lab_mean_spread")
        sds = keras.ops.maximum(draw("lab_sd", "lab_sd_spread"), 1.0)
        return _per_image(lambda rgb: transfer_stain(rgb, means, sds), images, images.shape[-1])

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "reference": self.reference,
            "strength": self.strength,
            "seed": self.seed,
        }
