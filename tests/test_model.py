"""The network's parts: a cut inside VGG16 computes the same network, and test-time augmentation over the
8 dihedral views is exact. Randomly initialised at 32 px."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from kedro_datasets.tensorflow import TensorFlowModelDataset

from all_detection.core.model import (
    assemble_classifier,
    base_layer_names,
    build_base,
    build_base_above,
    build_feature_extractor,
    build_head,
    inner_classifier,
    vgg16_layers,
    with_test_time_augmentation,
)
from tests.configuration import configured_parameters

HEAD = configured_parameters()["model"]["head"]
SIZE = 32


def images(channels: int, count: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE, channels)).astype(np.float32)


def numpy(tensor) -> np.ndarray:
    return keras.ops.convert_to_numpy(tensor)


def answers(model: keras.Model, batch: np.ndarray) -> np.ndarray:
    """The model's output in inference mode, called eagerly: `predict` would first trace a graph, most
    of these tests' time at 32 px. Its compiled path is checked once, on the reloaded TTA model."""
    return numpy(model(batch, training=False))


@pytest.fixture(scope="module")
def base() -> keras.Model:
    """One randomly initialised VGG16 shared by the cuts, which build around it without changing it."""
    return build_base(SIZE, None)[0]


@pytest.mark.parametrize("channels", [3, 6])
@pytest.mark.parametrize("cache_at", ["block5_conv2", "block4_pool", "block1_conv1"])
def test_a_cut_inside_vgg16_computes_the_same_network(base: keras.Model, channels: int, cache_at: str):
    whole = build_feature_extractor(base, channels, "imagenet")
    below = build_feature_extractor(base, channels, "imagenet", cache_at)
    above = build_base_above(base, cache_at, below.output_shape[1:], 2 if channels == 6 else 1)
    batch = images(channels)
    np.testing.assert_allclose(numpy(above(below(batch))), numpy(whole(batch)), rtol=1e-4, atol=1e-6)
    head = build_head(whole.output_shape[1:], HEAD)
    cut = assemble_classifier(below, head, base_above=above)
    full = assemble_classifier(whole, head)
    np.testing.assert_allclose(answers(cut, batch), answers(full, batch), rtol=1e-4, atol=1e-6)
    # Every VGG16 layer is found, in order, wherever the cut put it.
    assert [layer.name for layer in vgg16_layers(cut)] == base_layer_names(base)[1:]


def test_the_base_output_as_cut_leaves_nothing_above_it_and_unknown_layers_are_refused():
    base, _ = build_base(SIZE, None)
    extractor = build_feature_extractor(base, 3, "imagenet", "block5_pool")
    assert build_base_above(base, "block5_pool", extractor.output_shape[1:], 1) is None
    with pytest.raises(ValueError, match=r"training\.cache_at must be one of .*block5_conv2"):
        build_feature_extractor(base, 3, "imagenet", "block6_conv1")


def orientation_blind() -> keras.Model:
    """Mean colour to class probabilities: the same answer for every rotation and mirror image."""
    inputs = keras.Input((SIZE, SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(pooled / 255.0))


def test_test_time_augmentation_of_an_orientation_blind_model_changes_nothing():
    model, batch = orientation_blind(), images(3)
    np.testing.assert_allclose(
        answers(with_test_time_augmentation(model, "dihedral"), batch),
        answers(model, batch),
        rtol=1e-5,
        atol=1e-6,
    )
    assert with_test_time_augmentation(model, "none") is model
    with pytest.raises(ValueError, match=r"evaluation\.tta"):
        with_test_time_augmentation(model, "d4")


def orientation_aware(seed: int = 0) -> keras.Model:
    """Each pixel weighed on its own: turning or mirroring the image changes the answer."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    flat = keras.layers.Flatten()(inputs / 255.0)
    return keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(flat), name="all_classifier")


def test_dihedral_test_time_augmentation_is_the_mean_over_the_8_exact_views(tmp_path):
    classifier, batch = orientation_aware(), images(3, count=4)
    views = [np.rot90(batch, turns, axes=(1, 2)) for turns in range(4)]
    views += [view[:, :, ::-1] for view in views]
    expected = np.mean([answers(classifier, np.ascontiguousarray(view)) for view in views], axis=0)
    augmented = with_test_time_augmentation(classifier, "dihedral")
    np.testing.assert_allclose(answers(augmented, batch), expected, rtol=1e-5, atol=1e-6)
    # The views differ to this model, so the mean is not the plain answer.
    assert np.abs(expected - answers(classifier, batch)).max() > 0.05
    # Saved and reloaded in safe mode, the model still averages, and its classifier is found inside.
    dataset = TensorFlowModelDataset(filepath=str(tmp_path / "model.keras"))
    dataset.save(augmented)
    reloaded = dataset.load()
    np.testing.assert_allclose(reloaded.predict(batch, verbose=0), expected, rtol=1e-5, atol=1e-6)
    assert inner_classifier(reloaded).name == "all_classifier"
    assert inner_classifier(classifier) is classifier
