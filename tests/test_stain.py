"""The stain in CIELAB (`core.stain`): the colour conversion against OpenCV's, Reinhard's transfer, and the
layers that normalise a stain inside the model or randomise it in training. Backend-neutral: CI runs it
under JAX too."""

from __future__ import annotations

import cv2
import keras
import numpy as np
import pytest

from all_detection.core.model import build_base, build_feature_extractor
from all_detection.core.stain import (
    RandomStain,
    StainNormalisation,
    lab_from_rgb,
    rgb_from_lab,
    stain_reference,
    stain_statistics,
    transfer_stain,
)
from all_detection.synthetic import render_smear

SIZE = 32


def smears(count: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack(
        [render_smear(label, rng, SIZE)[0] for label in ("Benign", "Early", "Pre", "Pro")[:count]]
    )


def numpy(tensor) -> np.ndarray:
    return keras.ops.convert_to_numpy(tensor)


def test_lab_matches_opencv_and_converts_back():
    pixels = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)
    ours = numpy(lab_from_rgb(pixels))
    theirs = np.stack([cv2.cvtColor(image.astype(np.float32) / 255, cv2.COLOR_RGB2Lab) for image in pixels])
    np.testing.assert_allclose(ours, theirs, atol=0.5)
    np.testing.assert_allclose(numpy(rgb_from_lab(ours)), pixels, atol=0.01)


def test_transfer_gives_the_target_stain_and_keeps_black_black():
    images = smears()
    images[0, :8, :8] = 0  # a black corner, as a segmented image's background
    moved = numpy(transfer_stain(images, [60.0, 12.0, -25.0], [9.0, 4.0, 6.0])).round().clip(0, 255)
    means, spreads = stain_statistics(moved)
    np.testing.assert_allclose(means, [[60.0, 12.0, -25.0]] * 4, atol=0.6)
    np.testing.assert_allclose(spreads, [[9.0, 4.0, 6.0]] * 4, atol=0.6)
    assert not moved[0, :8, :8].any()
    # One target per image, too.
    targets = np.array([[50.0, 0.0, 0.0], [70.0, 5.0, -5.0]])
    means, _ = stain_statistics(numpy(transfer_stain(images[:2], targets, [[8.0] * 3] * 2)).round())
    np.testing.assert_allclose(means, targets, atol=0.6)


def test_normalisation_gives_two_stains_of_one_smear_the_same_input():
    """The same smear stained two ways reaches the network the same: the stain carries no information."""
    smear = smears(1)
    restained = numpy(transfer_stain(smear, [55.0, 20.0, -30.0], [14.0, 6.0, 9.0])).round().clip(0, 255)
    reference = stain_reference(smears())
    layer = StainNormalisation(reference["lab_mean"], reference["lab_sd"])
    first, second = numpy(layer(smear.astype(np.float32))), numpy(layer(restained.astype(np.float32)))
    assert np.abs(smear.astype(float) - restained).mean() > 10
    assert np.abs(first - second).mean() < 1.5


def test_stain_reference_is_the_mean_stain_and_its_spread():
    images = smears()
    means, spreads = stain_statistics(images)
    reference = stain_reference(images, batch_size=3)
    assert reference["images"] == 4
    np.testing.assert_allclose(reference["lab_mean"], means.mean(axis=0), atol=1e-3)
    np.testing.assert_allclose(reference["lab_sd"], spreads.mean(axis=0), atol=1e-3)
    np.testing.assert_allclose(reference["lab_mean_spread"], means.std(axis=0), atol=1e-3)
    # A dual (6-channel) stack is measured on its original half.
    dual = np.concatenate([images, np.zeros_like(images)], axis=-1)
    assert stain_reference(dual) == reference


def test_random_stain_varies_in_training_only_and_treats_dual_halves_alike():
    images = smears().astype(np.float32)
    layer = RandomStain(stain_reference(images), strength=1.0, seed=3)
    assert np.array_equal(numpy(layer(images, training=False)), images)
    first, second = numpy(layer(images, training=True)), numpy(layer(images, training=True))
    assert np.abs(first - images).mean() > 1 and np.abs(first - second).mean() > 1
    dual = numpy(layer(np.concatenate([images, images], axis=-1), training=True))
    np.testing.assert_allclose(dual[..., :3], dual[..., 3:], atol=1e-3)
    # Seeded: a new layer with the same seed draws the same stains.
    again = RandomStain(stain_reference(images), strength=1.0, seed=3)
    np.testing.assert_allclose(numpy(again(images, training=True)), first, atol=1e-3)


def test_a_stain_normalising_model_saves_and_loads(tmp_path):
    reference = stain_reference(smears())
    base, _ = build_base(SIZE, None)
    extractor = build_feature_extractor(base, 3, "imagenet", stain_reference=reference)
    assert extractor.get_layer("stain_normalisation").lab_mean == pytest.approx(reference["lab_mean"])
    extractor.save(tmp_path / "extractor.keras")
    loaded = keras.models.load_model(tmp_path / "extractor.keras", safe_mode=True)
    images = smears()
    np.testing.assert_allclose(loaded.predict_on_batch(images), extractor.predict_on_batch(images), atol=1e-4)
