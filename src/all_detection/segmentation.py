"""HSV thresholding of stained leukocytes, as the dataset's authors made `Segmented/`, and what it derives.

The authors' published recipe reads a JPEG with OpenCV (BGR channel order), converts that array with
`cv2.COLOR_RGB2HSV` as if it were RGB, keeps `cv2.inRange(hsv, (168, 50, 50), (182, 255, 255))` and
masks the image with `cv2.bitwise_and`. The channel quirk swaps red and blue before the hue is taken,
which mirrors every hue h to 240 - h degrees: their band, OpenCV hue 168-179 (336-358 degrees), is the
blue-violet band 121-132 (242-264 degrees) of the true colours; over all colours the two masks agree
to 99.5%, the rest being 8-bit hue rounding. `channel_order: bgr_as_rgb` reproduces the quirk exactly;
`rgb` converts correctly and takes thresholds in true-colour hues.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from all_detection.layout import CHANNEL_ORDERS, INPUT_MODES
from all_detection.shortcuts import paint_corners

#: The dataset authors' published recipe, quirk included, as `blast_mask` parameters.
AUTHORS_RECIPE: dict[str, Any] = {
    "channel_order": "bgr_as_rgb",
    "hsv_ranges": [[[168, 50, 50], [182, 255, 255]]],
}


def blast_mask(rgb: np.ndarray, segmentation: dict[str, Any]) -> np.ndarray:
    """Boolean mask of the stained (purple) cells of an RGB uint8 image, by HSV thresholds.

    `segmentation` holds `channel_order` (`rgb`, or `bgr_as_rgb` for the authors' quirk), `hsv_ranges`
    (a list of `[lower, upper]` HSV boxes on OpenCV's scale, H 0-179 and S, V 0-255, whose union is
    kept) and the optional cleanup: `opening_px` (a morphological opening of that diameter removes
    thin rims and specks), `fill_holes` (pale nucleoli and vacuoles become part of their cell) and
    `min_area_px` (connected blobs smaller than this are dropped). Sizes are in pixels of the image given.
    """
    order = segmentation.get("channel_order", "rgb")
    if order not in CHANNEL_ORDERS:
        raise ValueError(f"segmentation.channel_order must be one of {CHANNEL_ORDERS}, not {order!r}")
    # The quirk: OpenCV would have handed over BGR, and the RGB conversion was applied to it anyway.
    pixels = np.ascontiguousarray(rgb[..., ::-1]) if order == "bgr_as_rgb" else np.ascontiguousarray(rgb)
    hsv = cv2.cvtColor(pixels, cv2.COLOR_RGB2HSV)
    mask = np.zeros(rgb.shape[:2], dtype=bool)
    for lower, upper in segmentation["hsv_ranges"]:
        mask |= cv2.inRange(hsv, np.array(lower, np.uint8), np.array(np.minimum(upper, 255), np.uint8)) > 0
    return clean_mask(
        mask,
        opening_px=segmentation.get("opening_px", 0),
        fill_holes=segmentation.get("fill_holes", False),
        min_area_px=segmentation.get("min_area_px", 0),
    )


def clean_mask(
    mask: np.ndarray, opening_px: int = 0, fill_holes: bool = False, min_area_px: int = 0
) -> np.ndarray:
    """Optional cleanup of a threshold mask: opening, hole filling, dropping blobs below an area."""
    cleaned = mask.astype(np.uint8)
    if opening_px > 1:
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (opening_px, opening_px))
        cleaned = cv2.morphologyEx(cleaned, cv2.MORPH_OPEN, disc)
    if fill_holes:
        cleaned = ndimage.binary_fill_holes(cleaned).astype(np.uint8)
    if min_area_px > 0:
        count, labels, stats, _ = cv2.connectedComponentsWithStats(cleaned, connectivity=8)
        large = np.zeros(count, dtype=bool)
        large[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area_px
        cleaned = large[labels]
    return cleaned.astype(bool)


def segment(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The segmented image: the cells in their true colours on black, as `cv2.bitwise_and` makes it."""
    return np.where(mask[..., None], rgb, 0).astype(np.uint8)


def dilated(mask: np.ndarray, dilation_px: int) -> np.ndarray:
    """The mask grown by a disc of diameter `dilation_px` (unchanged below 2), so the cells' pale rims,
    which thresholds miss, count as cell."""
    if dilation_px <= 1:
        return mask.astype(bool)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (dilation_px, dilation_px))
    return cv2.dilate(mask.astype(np.uint8), disc) > 0


def dim_background(
    rgb: np.ndarray, mask: np.ndarray, dilation_px: int, background_level: float
) -> np.ndarray:
    """The original with everything outside a dilated mask dimmed to `background_level` of its brightness.

    Dilating keeps the cells' pale rims and immediate surroundings, which thresholds miss, and dimming
    rather than blacking out keeps the context a pathologist would see, only quieter.
    """
    mask = dilated(mask, dilation_px)
    dimmed = rgb.astype(np.float32) * background_level
    return np.where(mask[..., None], rgb, dimmed.round()).astype(np.uint8)


def stained_bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of all stained pixels, end-exclusive, or None when nothing is stained."""
    rows, columns = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    y0, y1 = np.flatnonzero(rows)[[0, -1]]
    x0, x1 = np.flatnonzero(columns)[[0, -1]]
    return int(x0), int(y0), int(x1) + 1, int(y1) + 1


def dataset_mask(segmented_rgb: np.ndarray, min_value: int) -> np.ndarray:
    """The mask behind one of the dataset's `Segmented/` images: its non-black pixels.

    JPEG compression leaves faint noise in the black background, so a pixel counts only when its
    brightest channel exceeds `min_value`.
    """
    return segmented_rgb.max(axis=-1) > min_value


def dice_and_iou(predicted: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean masks; two empty masks agree perfectly (1.0, 1.0)."""
    intersection = np.logical_and(predicted, reference).sum()
    total = predicted.sum() + reference.sum()
    if total == 0:
        return 1.0, 1.0
    return float(2 * intersection / total), float(intersection / (total - intersection))


def model_input(rgb: np.ndarray, preprocessing: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """What the network sees for one RGB image, and the image's blast mask, both at full resolution first.

    `preprocessing.input_mode` picks `original` (the paper's), `segmented` (cells on black), `masked`
    (background outside a dilated mask dimmed) or `dual` (original and segmented stacked as 6 channels,
    the two inputs of the dual model). With `preprocessing.corners.painted` the four corner squares
    (the scale-bar label's) are painted out first. The mask is computed at the image's own resolution,
    where the thresholds were set, and the result resized to `image_size` square with area averaging.
    """
    mode = preprocessing["input_mode"]
    if mode not in INPUT_MODES:
        raise ValueError(f"preprocessing.input_mode must be one of {INPUT_MODES}, not {mode!r}")
    corners = preprocessing["corners"]
    if corners["painted"]:
        rgb = paint_corners(rgb, corners["fraction"])
    mask = blast_mask(rgb, preprocessing["segmentation"])
    if mode == "original":
        planes = rgb
    elif mode == "segmented":
        planes = segment(rgb, mask)
    elif mode == "masked":
        masked = preprocessing["masked"]
        planes = dim_background(rgb, mask, masked["dilation_px"], masked["background_level"])
    else:
        planes = np.concatenate([rgb, segment(rgb, mask)], axis=-1)
    size = preprocessing["image_size"]
    # OpenCV resizes at most 4 channels at once outside its integer-factor fast path: resize the
    # 3-channel images, then stack (the dual mode's 6 channels as two images).
    resized = [
        cv2.resize(planes[..., start : start + 3], (size, size), interpolation=cv2.INTER_AREA)
        for start in range(0, planes.shape[-1], 3)
    ]
    return np.concatenate([image.reshape(size, size, -1) for image in resized], axis=-1), mask
