"""What a model could read from a smear besides its cells, and the changes that take it away.

The cues of the shortcut audit's null models carry no morphology: global colour statistics, the four
corner patches (where the microscope's scale-bar label sits) and an 8x8 thumbnail. The counterfactual
smears each change one thing a shortcut could rest on and keep the cells: one pooled stain for every
image, another image's stain (Reinhard's transfer, `core.stain`), the corners painted out, the
background outside the cells flattened, grey levels. Pure functions on RGB uint8 arrays.
"""

from __future__ import annotations

import cv2
import keras
import numpy as np

from all_detection.core.stain import transfer_stain

COLOUR_PERCENTILES = (5, 25, 50, 75, 95)
#: Per channel of RGB and HSV: mean, standard deviation and the percentiles: 6 x 7 = 42 numbers.
COLOUR_STATISTICS = 6 * (2 + len(COLOUR_PERCENTILES))


def colour_statistics(rgb: np.ndarray) -> np.ndarray:
    """The image's global colour, with nothing of where anything is: per channel of RGB and of HSV
    (OpenCV's scale) the mean, standard deviation and 5th to 95th percentiles, 42 numbers."""
    planes = np.concatenate([rgb, cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)], axis=-1).reshape(-1, 6)
    planes = planes.astype(np.float32)
    return np.concatenate(
        [planes.mean(axis=0), planes.std(axis=0), *np.percentile(planes, COLOUR_PERCENTILES, axis=0)]
    )


def corner_boxes(height: int, width: int, fraction: float) -> list[tuple[slice, slice]]:
    """The four corner squares of side `fraction` of the shorter side, as (rows, columns) slices."""
    side = max(1, round(fraction * min(height, width)))
    rows, columns = (
        (slice(0, side), slice(height - side, height)),
        (slice(0, side), slice(width - side, width)),
    )
    return [(r, c) for r in rows for c in columns]


def corner_mask(height: int, width: int, fraction: float) -> np.ndarray:
    """True inside the four corner squares of `corner_boxes`."""
    mask = np.zeros((height, width), dtype=bool)
    for rows, columns in corner_boxes(height, width, fraction):
        mask[rows, columns] = True
    return mask


def corner_patches(rgb: np.ndarray, fraction: float, side: int = 6) -> np.ndarray:
    """The four corner squares (`corner_boxes`) shrunk to `side` x `side` pixels each, flattened: the
    scale-bar label, marks and vignetting of the corners, and nothing of the cells in the middle."""
    patches = [
        cv2.resize(np.ascontiguousarray(rgb[rows, columns]), (side, side), interpolation=cv2.INTER_AREA)
        for rows, columns in corner_boxes(*rgb.shape[:2], fraction)
    ]
    return np.concatenate(patches).astype(np.float32).ravel()


def thumbnail(rgb: np.ndarray, side: int = 8) -> np.ndarray:
    """The whole image shrunk to `side` x `side` pixels, flattened: layout and colour, no cell shapes."""
    return cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()


def _median_colour(rgb: np.ndarray, where: np.ndarray) -> np.ndarray:
    pixels = rgb[where] if where.any() else rgb.reshape(-1, rgb.shape[-1])
    return np.median(pixels, axis=0).round().astype(np.uint8)


def paint_corners(rgb: np.ndarray, fraction: float) -> np.ndarray:
    """The image with its four corner squares (`corner_boxes`) painted in its own median colour, so a
    scale-bar label or a mark in a corner is gone and the corners look like empty background."""
    painted = rgb.copy()
    painted[corner_mask(*rgb.shape[:2], fraction)] = _median_colour(rgb, np.ones(rgb.shape[:2], bool))
    return painted


def flatten_background(rgb: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """The image with everything outside `cells` (a boolean mask, e.g. the dilated blast mask) in one
    colour, the median of what it replaces: red cells, platelets, debris and the background's tint go."""
    flattened = rgb.copy()
    flattened[~cells] = _median_colour(rgb, ~cells)
    return flattened


def grey_levels(rgb: np.ndarray) -> np.ndarray:
    """The image's luminance (ITU-R 601, as OpenCV) in all three channels: shapes and shades, no hue."""
    return np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=-1)


def recoloured(rgb: np.ndarray, lab_mean: np.ndarray, lab_sd: np.ndarray) -> np.ndarray:
    """The image with another stain, by Reinhard's transfer in CIELAB: its L, a and b standardised, then
    given `lab_mean` and `lab_sd` (3 each), as uint8."""
    moved = transfer_stain(rgb[None].astype(np.float32), lab_mean, lab_sd)
    return keras.ops.convert_to_numpy(moved)[0].round().clip(0, 255).astype(np.uint8)


def colour_signature(rgb: np.ndarray, image_size: int) -> np.ndarray:
    """`colour_statistics` of the image resized (area averaging) to `image_size` square, as the model
    sees it: a training image and a photograph of any resolution are measured alike."""
    return colour_statistics(cv2.resize(rgb, (image_size, image_size), interpolation=cv2.INTER_AREA))


def fit_colour_range(signatures: np.ndarray, quantile: float, image_size: int, folds: int = 5) -> dict:
    """The colour range of a model's images (its training and validation images), for telling a new
    image unlike them.

    `signatures` are `colour_signature`s, one row per image. Each of the 42 numbers is standardised by
    the images' mean and sd, and their covariance estimated with Ledoit-Wolf shrinkage (stable with few
    images per number); an image's distance is its Mahalanobis distance from the mean. `limit` is the
    `quantile` of out-of-fold distances: each image measured against a range fitted on the other
    `folds - 1` folds, so the limit is that of images the range has not seen, not flattered by fitting.
    """
    signatures = np.asarray(signatures, dtype=np.float64)
    fold_of = np.arange(len(signatures)) % folds
    held_out = np.concatenate(
        [
            colour_distance(_colour_reference(signatures[fold_of != fold]), signatures[fold_of == fold])
            for fold in range(folds)
            if (fold_of == fold).any() and (fold_of != fold).sum() > 1
        ]
        or [np.empty(0)]
    )
    return {
        "measure": "Mahalanobis distance of an image's colour statistics (mean, sd and 5-95th percentiles "
        "of R, G, B, H, S and V) from the model's images', Ledoit-Wolf covariance",
        "image_size": int(image_size),
        "images": len(signatures),
        **_colour_reference(signatures),
        "quantile": float(quantile),
        "limit": float(np.quantile(held_out, quantile)) if len(held_out) else None,
        "held_out_median": float(np.median(held_out)) if len(held_out) else None,
        "folds": folds,
    }


def _colour_reference(signatures: np.ndarray) -> dict[str, list]:
    from sklearn.covariance import LedoitWolf  # noqa: PLC0415 - only fitting needs it

    mean, scale = signatures.mean(axis=0), signatures.std(axis=0)
    scale[scale == 0] = 1.0
    precision = LedoitWolf().fit((signatures - mean) / scale).precision_
    return {"mean": mean.tolist(), "scale": scale.tolist(), "precision": precision.tolist()}


def colour_distance(colour_range: dict, signatures: np.ndarray) -> np.ndarray:
    """Each `colour_signature`'s (rows) Mahalanobis distance from the model's images' colour, as
    `fit_colour_range` measured it."""
    mean, scale = np.asarray(colour_range["mean"]), np.asarray(colour_range["scale"])
    centred = (np.atleast_2d(signatures) - mean) / scale
    squared = np.einsum("ij,jk,ik->i", centred, np.asarray(colour_range["precision"]), centred)
    return np.sqrt(np.maximum(squared, 0.0))
