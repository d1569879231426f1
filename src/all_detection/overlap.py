"""Overlapping fields: two files that show the same part of a smear, the microscope moved by a few tens of
pixels between them. Their pixels differ everywhere, so neither byte hashes nor perceptual hashes see
them, yet a model tested on one has seen the other's cells in training.

Candidates come from a cheap thumbnail distance (each image's nearest neighbours, so the cost grows
with the number of images times a constant, not with every pair); each candidate pair is then checked by
OpenCV: ORB keypoints matched by Hamming distance with Lowe's ratio test, and a RANSAC fit of one
rotation, scale and shift that many matches must agree on.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import cv2
import numpy as np
from sklearn.neighbors import NearestNeighbors

# Thumbnails of the field's light and dark, blurred so a shift of a few pixels changes them little.
_THUMBNAIL_PX = 16
# FAST's corner contrast in grey levels: a smear's corners are soft, and OpenCV's default of 20 finds
# only a few dozen in a 224-pixel field.
FAST_THRESHOLD = 5
# Lowe's ratio: a match counts when its best candidate is clearly better than the second best.
_RATIO = 0.75
# A shifted field keeps its magnification: a fitted scale beyond this is another field that happens to
# share a pattern (or a scale-bar label).
_SCALE_RANGE = (0.8, 1.25)


class FieldFeatures(NamedTuple):
    """What the overlap search keeps of one image: its thumbnail and its ORB keypoints and descriptors."""

    thumbnail: np.ndarray
    points: np.ndarray
    descriptors: np.ndarray | None


def field_features(rgb: np.ndarray, keypoints: int, corner_fraction: float) -> FieldFeatures:
    """The thumbnail and ORB features of one image. Keypoints in the four corner squares (side
    `corner_fraction` of the image's) are dropped: the microscope's scale-bar label sits there,
    identical in every image of a class, and would match across different fields."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    blurred = cv2.GaussianBlur(grey, (0, 0), max(grey.shape) / (4 * _THUMBNAIL_PX))
    thumbnail = cv2.resize(blurred, (_THUMBNAIL_PX, _THUMBNAIL_PX), interpolation=cv2.INTER_AREA)
    thumbnail = thumbnail.astype(np.float32).ravel()
    thumbnail = (thumbnail - thumbnail.mean()) / (thumbnail.std() + 1e-6)
    found, descriptors = cv2.ORB_create(nfeatures=keypoints, fastThreshold=FAST_THRESHOLD).detectAndCompute(
        grey, None
    )
    points = np.array([point.pt for point in found], dtype=np.float32).reshape(-1, 2)
    if len(points):
        height, width = grey.shape
        side = corner_fraction * min(height, width)
        near_x = (points[:, 0] < side) | (points[:, 0] > width - side)
        near_y = (points[:, 1] < side) | (points[:, 1] > height - side)
        keep = ~(near_x & near_y)
        points, descriptors = points[keep], descriptors[keep] if descriptors is not None else None
    return FieldFeatures(thumbnail, points, descriptors if len(points) else None)


def shared_keypoints(first: FieldFeatures, second: FieldFeatures) -> int:
    """How many keypoint matches between two images agree on one rotation, scale and shift (RANSAC
    inliers of a partial affine fit); 0 when fewer than three match or the scale is not a shifted field's."""
    if first.descriptors is None or second.descriptors is None or len(second.descriptors) < 2:
        return 0
    candidates = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(first.descriptors, second.descriptors, k=2)
    good = [pair[0] for pair in candidates if len(pair) == 2 and pair[0].distance < _RATIO * pair[1].distance]
    if len(good) < 3:
        return 0
    source = first.points[[match.queryIdx for match in good]]
    target = second.points[[match.trainIdx for match in good]]
    # OpenCV's RANSAC draws from its own fixed-seed generator, so the same pair gives the same count.
    transform, inliers = cv2.estimateAffinePartial2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=3.0
    )
    if transform is None:
        return 0
    scale = float(np.hypot(transform[0, 0], transform[1, 0]))
    if not _SCALE_RANGE[0] <= scale <= _SCALE_RANGE[1]:
        return 0
    return int(inliers.sum())


def overlapping_pairs(features: list[FieldFeatures], overlap: dict[str, Any]) -> list[tuple[int, int, int]]:
    """Pairs (i < j, shared keypoints) of images that show the same field: each image's
    `overlap.candidates` nearest thumbnails are checked, and a pair joins when at least
    `overlap.min_shared_keypoints` keypoint matches agree on one shift (`shared_keypoints`)."""
    if len(features) < 2:
        return []
    thumbnails = np.stack([feature.thumbnail for feature in features])
    neighbours = min(len(features), int(overlap["candidates"]) + 1)
    _, nearest = NearestNeighbors(n_neighbors=neighbours).fit(thumbnails).kneighbors(thumbnails)
    candidates = {(min(i, j), max(i, j)) for i, row in enumerate(nearest) for j in row if i != j}
    pairs = []
    for first, second in sorted(candidates):
        shared = shared_keypoints(features[first], features[second])
        if shared >= overlap["min_shared_keypoints"]:
            pairs.append((first, second, shared))
    return pairs
