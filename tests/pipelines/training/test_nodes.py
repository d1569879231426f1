"""The paper's model and both training modes, at 32 px with a randomly initialised base."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pandas as pd
import pytest
from kedro_datasets.tensorflow import TensorFlowModelDataset

from all_detection.checks import ParameterError, check_pipeline_shape
from all_detection.core.model import (
    BaseWeightsError,
    assemble_classifier,
    build_base,
    build_feature_extractor,
    build_head,
    unfreeze_last_blocks,
    vgg16_layers,
)
from all_detection.core.stain import stain_reference, transfer_stain
from all_detection.core.training import class_weights
from all_detection.layout import CLASSES
from all_detection.pipelines.training import create_pipeline
from all_detection.pipelines.training.nodes import cache_base_features, fit_head, fit_online
from tests.configuration import configured_parameters, session_configuration

MODEL = {**configured_parameters()["model"], "base_weights": None}
PREPROCESSING = configured_parameters()["preprocessing"]
TRAINING = configured_parameters()["training"]
AUGMENTATION = configured_parameters()["augmentation"]
# A randomly initialised base gives features a thousand times smaller than ImageNet's, so BatchNorm's
# inference statistics need more steps to settle: small batches give them those steps.
TINY = {**TRAINING, "epochs": 12, "batch_size": 4, "early_stopping_patience": 20, "feature_batch_size": 16}
SEED = 42


def toy_smears(per_class: int, seed: int, size: int = 32) -> tuple[np.ndarray, pd.DataFrame]:
    """A purple cell per image on a pale slide; its size and hue carry the class, noise the rest."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    rows, columns = np.mgrid[:size, :size]
    for label_index in range(len(CLASSES)):
        for _ in range(per_class):
            image = np.full((size, size, 3), (230.0, 230.0, 245.0))
            radius = size * (0.15 + 0.07 * label_index)
            centre = rng.uniform(radius, size - radius, 2)
            cell = (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 < radius**2
            image[cell] = (120 + 25 * label_index, 70, 200 - 20 * label_index)
            images.append(np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8))
            labels.append(label_index)
    index = pd.DataFrame(
        {
            "image_id": [f"toy/{seed}/{number}.png" for number in range(len(labels))],
            "label": [CLASSES[label] for label in labels],
            "label_index": labels,
        }
    )
    return np.stack(images), index


@pytest.fixture(scope="module")
def toy_splits():
    return {"train": toy_smears(12, 0), "val": toy_smears(4, 1), "test": toy_smears(6, 2)}


def train(
    splits: dict, training: dict, preprocessing: dict = PREPROCESSING, augmentation: dict = AUGMENTATION
) -> tuple[keras.Model, pd.DataFrame, dict]:
    (train_images, train_index), (val_images, val_index) = splits["train"], splits["val"]
    stain = stain_reference(train_images)
    if training["mode"] == "online":
        return fit_online(train_images, train_index, val_images, val_index, stain, MODEL, preprocessing,
                          augmentation, training, SEED)  # fmt: skip
    train_features, val_features, _, record = cache_base_features(
        train_images, val_images, splits["test"][0], stain, MODEL, preprocessing, training, SEED
    )
    return fit_head(train_features, val_features, train_index, val_images, val_index, record, stain, MODEL,
                    preprocessing, training, SEED)  # fmt: skip


def accuracy(classifier: keras.Model, images: np.ndarray, index: pd.DataFrame) -> float:
    return float((classifier.predict(images, verbose=0).argmax(axis=1) == index["label_index"]).mean())


@pytest.mark.parametrize(("channels", "size"), [(3, 32), (6, 32), (3, 64)])
def test_shapes_for_every_input_mode(channels, size):
    base, _ = build_base(size, None)
    extractor = build_feature_extractor(base, channels, "imagenet")
    feature_channels = 512 * (2 if channels == 6 else 1)
    assert extractor.output_shape == (None, size // 32, size // 32, feature_channels)
    classifier = assemble_classifier(extractor, build_head(extractor.output_shape[1:], MODEL["head"]))
    probabilities = classifier.predict(np.zeros((2, size, size, channels), np.float32), verbose=0)
    assert probabilities.shape == (2, len(CLASSES))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


def test_the_head_has_the_papers_layers():
    head = build_head((7, 7, 512), MODEL["head"])
    kinds = [type(layer).__name__ for layer in head.layers[1:]]
    assert kinds == ["Conv2D", "MaxPooling2D"] * 3 + ["Flatten"] + [
        "Dense",
        "BatchNormalization",
        "Dropout",
    ] * 2 + ["Dense"]
    assert head.layers[-1].output.shape == (None, 4)
    assert [layer.rate for layer in head.layers if isinstance(layer, keras.layers.Dropout)] == [0.1, 0.2]
    assert head.get_layer(index=-2).output.shape == (None, 512)
    assert [
        layer.output.shape[1] for layer in head.layers if isinstance(layer, keras.layers.MaxPooling2D)
    ] == [
        4,
        2,
        1,
    ]


@pytest.mark.slow
def test_cached_training_beats_chance_and_leaves_the_base_untouched(toy_splits):
    classifier, history, summary = train(toy_splits, TINY)
    assert accuracy(classifier, *toy_splits["test"]) > 0.45  # chance is 0.25
    assert summary["mode"] == "cached" and summary["feature_cache"]["images"] == 48 + 16 + 24
    assert list(history.columns[:2]) == ["epoch", "phase"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds"} <= set(history)
    # The saved model takes images and holds exactly the weights of a fresh base with the same seed.
    keras.utils.set_random_seed(SEED)
    fresh_base, _ = build_base(32, None)
    trained_base = classifier.get_layer("feature_extractor").get_layer("vgg16")
    for fresh, trained in zip(fresh_base.weights, trained_base.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(fresh), keras.ops.convert_to_numpy(trained))


@pytest.mark.slow
def test_online_training_beats_chance_and_gives_the_base_no_gradient(toy_splits):
    keras.utils.set_random_seed(SEED)
    reference_base, _ = build_base(32, None)
    # The toy classes are told apart by their cell's hue as much as its size, and a random base sees
    # little else: per-image stain normalisation (the default, tested in both modes below) takes much of
    # the hue away, leaving this test's margin to chance. Here the online mechanics are under test.
    plain = {**PREPROCESSING, "stain_normalisation": "none"}
    classifier, _, summary = train(toy_splits, {**TINY, "mode": "online"}, plain)
    assert accuracy(classifier, *toy_splits["test"]) > 0.45
    assert summary["mode"] == "online" and summary["feature_cache"] == {"mode": "online"}
    trained_base = classifier.get_layer("feature_extractor").get_layer("vgg16")
    for before, after in zip(reference_base.weights, trained_base.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(before), keras.ops.convert_to_numpy(after))
    assert not any(layer.name.startswith("random_") for layer in classifier.layers)  # no augmentation kept


@pytest.mark.slow
def test_online_fine_tuning_trains_only_the_last_blocks(toy_splits):
    keras.utils.set_random_seed(SEED)
    reference_base, _ = build_base(32, None)
    training = {**TINY, "mode": "online", "epochs": 1, "fine_tune_blocks": 1, "fine_tune_epochs": 1}
    classifier, history, _ = train(toy_splits, training)
    assert history["phase"].tolist() == ["head", "fine_tune"]
    assert history["epoch"].tolist() == [1, 2]
    trained_base = classifier.get_layer("feature_extractor").get_layer("vgg16")
    for layer in trained_base.layers:
        if not layer.weights:
            continue
        changed = not np.array_equal(
            keras.ops.convert_to_numpy(layer.weights[0]),
            keras.ops.convert_to_numpy(reference_base.get_layer(layer.name).weights[0]),
        )
        assert changed == layer.name.startswith("block5"), layer.name


@pytest.mark.slow
def test_cached_fine_tuning_trains_only_the_layers_above_the_cut(toy_splits):
    keras.utils.set_random_seed(SEED)
    reference_base, _ = build_base(32, None)
    training = {**TINY, "cache_at": "block5_conv2", "fine_tune_epochs": 3, "fine_tune_learning_rate": 1e-5}
    # Validated on its own training images, so that fine-tuning, which lowers the training loss, is
    # kept for this test's checks; the next test covers fine-tuning that does not help.
    classifier, history, summary = train({**toy_splits, "val": toy_splits["train"]}, training)
    assert history["phase"].tolist() == ["head"] * 12 + ["fine_tune"] * 3
    assert history["epoch"].tolist() == list(range(1, 16))
    assert summary["cache_at"] == "block5_conv2" and summary["fine_tuned_layers"] == ["block5_conv3"]
    # block5_conv2's maps (2x2 at 32 px) were cached, not the base's output.
    assert summary["feature_cache"]["feature_shape"] == [2, 2, 512]
    # Only the layers above the cut and the head can receive gradients...
    trainable = {id(variable) for variable in classifier.trainable_weights}
    above = classifier.get_layer("base_above_cut").get_layer("block5_conv3")
    head = classifier.get_layer("head")
    assert trainable == {id(variable) for variable in above.trainable_weights + head.trainable_weights}
    # ...and they did: the weights kept are fine-tuning's, and nothing below the cut moved.
    assert history.loc[history["val_loss"].idxmin(), "phase"] == "fine_tune"
    for layer in vgg16_layers(classifier):
        if layer.weights:
            changed = not np.array_equal(
                keras.ops.convert_to_numpy(layer.weights[0]),
                keras.ops.convert_to_numpy(reference_base.get_layer(layer.name).weights[0]),
            )
            assert changed == (layer.name == "block5_conv3"), layer.name


@pytest.mark.slow
def test_fine_tuning_that_does_not_help_is_undone(toy_splits):
    keras.utils.set_random_seed(SEED)
    reference_base, _ = build_base(32, None)
    # A rate this high wrecks the layers above the cut at once.
    training = {**TINY, "epochs": 4, "cache_at": "block5_conv2", "fine_tune_epochs": 1,
                "fine_tune_learning_rate": 10.0}  # fmt: skip
    classifier, history, _ = train(toy_splits, training)
    assert history.loc[history["val_loss"].idxmin(), "phase"] == "head"
    kept = classifier.get_layer("base_above_cut").get_layer("block5_conv3").weights[0]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(kept),
        keras.ops.convert_to_numpy(reference_base.get_layer("block5_conv3").weights[0]),
    )


def test_balanced_class_weights_give_each_class_the_same_total():
    labels = np.array([0] * 10 + [1] * 30 + [2] * 40 + [3] * 20)
    weights = class_weights(labels, "balanced")
    totals = [weights[labels == label].sum() for label in range(4)]
    assert totals == pytest.approx([25.0] * 4) and weights.mean() == pytest.approx(1.0)
    assert class_weights(labels, "none") is None
    with pytest.raises(ValueError, match=r"training\.class_weight"):
        class_weights(labels, "inverse")


def test_unfreezing_counts_blocks_from_the_top():
    base, _ = build_base(32, None)
    assert unfreeze_last_blocks(base, 2) == [
        "block4_conv1", "block4_conv2", "block4_conv3", "block5_conv1", "block5_conv2", "block5_conv3",
    ]  # fmt: skip
    assert unfreeze_last_blocks(base, 0) == [] and not base.trainable
    with pytest.raises(ValueError, match="fine_tune_blocks"):
        unfreeze_last_blocks(base, 6)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cached", "online"])
def test_a_stain_normalising_model_gives_a_restained_smear_the_same_answer(toy_splits, mode):
    """With stain normalisation the trained model holds the training images' stain and gives every
    image it, so a test smear restained to another stain is scored as it was; stain augmentation
    trains in both modes too."""
    preprocessing = {**PREPROCESSING, "stain_normalisation": "reinhard"}
    augmentation = {**AUGMENTATION, "transforms": {**AUGMENTATION["transforms"], "stain": 1.0}}
    classifier, _, summary = train(
        toy_splits, {**TINY, "mode": mode, "epochs": 3}, preprocessing, augmentation
    )
    assert summary["stain_normalisation"] == "reinhard"
    assert summary["stain_reference"] == stain_reference(toy_splits["train"][0])
    extractor = classifier.get_layer("feature_extractor")
    assert extractor.get_layer("stain_normalisation").lab_mean == summary["stain_reference"]["lab_mean"]
    images = toy_splits["test"][0]
    restained = keras.ops.convert_to_numpy(transfer_stain(images, [50.0, 25.0, -35.0], [12.0, 8.0, 10.0]))
    original, changed = (
        classifier.predict(images, verbose=0),
        classifier.predict(restained.round(), verbose=0),
    )
    assert np.abs(original - changed).max() < 0.05
    # Without normalisation the same restaining moves the answers.
    plain, _, _ = train(
        toy_splits, {**TINY, "mode": mode, "epochs": 3}, {**preprocessing, "stain_normalisation": "none"}
    )
    assert np.abs(plain.predict(images, verbose=0) - plain.predict(restained.round(), verbose=0)).max() > 0.05


@pytest.mark.slow
def test_two_seeded_runs_give_the_same_model(toy_splits):
    first, _, _ = train(toy_splits, {**TINY, "epochs": 3})
    second, _, _ = train(toy_splits, {**TINY, "epochs": 3})
    test_images = toy_splits["test"][0]
    np.testing.assert_array_equal(
        first.predict(test_images, verbose=0), second.predict(test_images, verbose=0)
    )


@pytest.mark.slow
def test_saved_model_reloads_in_safe_mode_and_predicts_the_same(toy_splits, tmp_path):
    classifier, _, _ = train(toy_splits, {**TINY, "epochs": 2})
    dataset = TensorFlowModelDataset(filepath=str(tmp_path / "model.keras"))
    dataset.save(classifier)
    reloaded = dataset.load()
    test_images = toy_splits["test"][0]
    np.testing.assert_allclose(
        reloaded.predict(test_images, verbose=0),
        classifier.predict(test_images, verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )


def test_unusable_weights_stop_with_one_clear_message(tmp_path):
    with pytest.raises(
        BaseWeightsError, match=r"does not exist\. Pass a local copy .*model\.base_weights=null"
    ):
        build_base(32, str(tmp_path / "missing.h5"))
    not_weights = tmp_path / "notes.h5"
    with h5py.File(not_weights, "w") as file:
        file["layer"] = np.zeros((3, 3))
    with pytest.raises(BaseWeightsError, match="is not a Keras VGG16 notop weights file"):
        build_base(32, str(not_weights))


def test_the_demo_falls_back_to_a_random_base_and_records_why(tmp_path, caplog):
    base, provenance = build_base(32, str(tmp_path / "missing.h5"), random_fallback=True)
    assert provenance["used"] == "None" and "does not exist" in provenance["warning"]
    assert "Falling back to random initialisation" in caplog.text
    assert not base.trainable


def test_the_training_pipeline_has_the_nodes_of_the_run_s_mode():
    with session_configuration() as parameters:
        assert parameters["training"]["mode"] == "cached"
        cached = create_pipeline()
    assert {"cache_base_features_node", "fit_head_node"} <= {node.name for node in cached.nodes}
    # A session with --params training.mode=online registers the online pipeline.
    with session_configuration(training={"mode": "online"}) as online_run:
        online = create_pipeline()
    assert "fit_online_node" in {node.name for node in online.nodes}
    assert not {"train_features", "feature_cache", "augmented_train_images"} & online.all_inputs()
    check_pipeline_shape(online_run, online)
    with pytest.raises(ParameterError, match=r"training\.mode = 'online': the pipeline was registered for"):
        check_pipeline_shape(online_run, cached)
