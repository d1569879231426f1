"""Augmentation nodes: on a handful of small synthetic smears, RGB and dual (6-channel)."""

from __future__ import annotations

import keras
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from all_detection.core.augmenter import build_augmenter, count_views
from all_detection.core.model import DihedralView
from all_detection.core.stain import stain_reference, stain_statistics
from all_detection.layout import CLASSES
from all_detection.pipelines.augmentation.nodes import augment_training_split, plot_augmentation_examples
from all_detection.synthetic import render_smear
from tests.configuration import configured_parameters

SIZE = 32
SEED = 42
ALL_OFF = {
    "rotation_degrees": 0,
    "shear": 0.0,
    "zoom": 0.0,
    "horizontal_flip": False,
    "vertical_flip": False,
    "fill_mode": "reflect",
    "brightness": 0.0,
    "contrast": 0.0,
    "stain": 0.0,
}
PAPER = {**ALL_OFF, "rotation_degrees": 180, "shear": 0.2, "zoom": 0.2, "horizontal_flip": True,
         "vertical_flip": True}  # fmt: skip
EVERY_TRANSFORM = {**PAPER, "brightness": 0.2, "contrast": 0.2}


def augmentation(
    transforms: dict = PAPER, multiplier: float | dict = 3.5, balance: bool = False, dihedral: bool = False
) -> dict:
    if not isinstance(multiplier, dict):
        multiplier = dict.fromkeys(CLASSES, multiplier)
    return {"multiplier": multiplier, "balance": balance, "dihedral_views": dihedral, "batch_size": 4,
            "transforms": transforms, "examples_per_class": 3}  # fmt: skip


def training_split(per_class: dict[str, int], channels: int = 3) -> tuple[np.ndarray, pd.DataFrame]:
    """Synthetic training smears and their index, laid out as preprocessing hands them over."""
    rng = np.random.default_rng(0)
    labels = [label for label, count in per_class.items() for _ in range(count)]
    images = np.stack([render_smear(label, rng, SIZE)[0] for label in labels])
    if channels == 6:  # the dual mode's second half stands in for the segmented copy
        images = np.concatenate([images, images[..., ::-1]], axis=-1)
    index = pd.DataFrame(
        {
            "image_id": [f"Original/{label}/WBC-{label}-{row:03d}.jpg" for row, label in enumerate(labels)],
            "label": labels,
            "label_index": [CLASSES.index(label) for label in labels],
            "group": pd.array(range(len(labels)), dtype="Int64"),
            "split": "train",
        }
    )
    return images, index


@pytest.fixture(scope="module")
def smears() -> tuple[np.ndarray, pd.DataFrame]:
    return training_split({"Benign": 3, "Early": 2, "Pre": 2, "Pro": 1})


@pytest.mark.parametrize(
    "transform",
    [
        {"rotation_degrees": 180},
        {"shear": 0.2},
        {"zoom": 0.2},
        {"horizontal_flip": True, "vertical_flip": True},
        {"brightness": 0.3},
        {"contrast": 0.3},
        EVERY_TRANSFORM,
    ],
)
def test_each_transform_keeps_shape_and_value_range(smears, transform):
    images, index = smears
    augmenter = build_augmenter({**ALL_OFF, **transform}, SEED)
    views = np.asarray(augmenter(images.astype(np.float32), training=True))
    assert views.shape == images.shape
    assert views.min() >= -1e-3
    assert views.max() <= 255 + 1e-3
    assert not np.allclose(views, images)

    stored, _ = augment_training_split(
        images, index, stain_reference(images), augmentation({**ALL_OFF, **transform}), SEED
    )
    assert stored.dtype == np.uint8
    assert stored.shape[1:] == images.shape[1:]


@pytest.mark.parametrize(("flip", "axis"), [("horizontal_flip", 2), ("vertical_flip", 1)])
def test_flips_are_exact_mirror_images(smears, flip, axis):
    images, _ = smears
    augmenter = build_augmenter({**ALL_OFF, flip: True}, SEED)
    views = np.asarray(augmenter(images.astype(np.float32), training=True))
    flipped = (views == np.flip(images, axis=axis)).all(axis=(1, 2, 3))
    unchanged = (views == images).all(axis=(1, 2, 3))
    assert (flipped | unchanged).all()
    assert any(flipped)
    assert any(unchanged)


def test_with_every_transform_off_every_view_equals_its_source(smears):
    images, index = smears
    views, views_index = augment_training_split(
        images, index, stain_reference(images), augmentation(ALL_OFF), SEED
    )
    sources = images[index.reset_index().set_index("image_id").loc[views_index["source_id"], "index"]]
    assert np.array_equal(views, sources)


def test_fractional_multipliers_give_exact_class_totals():
    labels = pd.Series(["Benign"] * 5 + ["Early"] * 7 + ["Pre"] * 3 + ["Pro"] * 10)
    multiplier = {"Benign": 1.5, "Early": 2.25, "Pre": 4.3, "Pro": 1.0}
    views = count_views(labels, multiplier, balance=False, seed=SEED)
    totals = pd.Series(views).groupby(labels).sum().to_dict()
    assert totals == {"Benign": 8, "Early": 16, "Pre": 13, "Pro": 10}
    for label, m in multiplier.items():
        assert set(views[labels == label]) <= {int(m), int(m) + 1}
    assert (views >= 1).all()


def test_balance_gives_every_class_the_largest_class_total_at_the_mean_multiplier():
    labels = pd.Series(["Benign"] * 5 + ["Early"] * 7 + ["Pre"] * 3 + ["Pro"] * 10)
    multiplier = {"Benign": 1.5, "Early": 2.25, "Pre": 4.3, "Pro": 1.0}
    views = count_views(labels, multiplier, balance=True, seed=SEED)
    # mean multiplier 2.2625, largest class 10 images: round(22.625) = 23 views per class
    assert pd.Series(views).groupby(labels).sum().to_dict() == dict.fromkeys(multiplier, 23)


def test_node_makes_the_counted_views_per_class(smears):
    images, index = smears
    multiplier = {"Benign": 2.5, "Early": 4.3, "Pre": 1.0, "Pro": 3.0}
    for balance in (False, True):
        _, views_index = augment_training_split(
            images, index, stain_reference(images), augmentation(PAPER, multiplier, balance), SEED
        )
        made = views_index["label"].value_counts().to_dict()
        counted = pd.Series(count_views(index["label"], multiplier, balance, SEED))
        assert made == counted.groupby(index["label"]).sum().to_dict()
    # balanced: largest class 3 images, mean multiplier 2.7, round(8.1) = 8 views in every class
    assert made == dict.fromkeys(CLASSES, 8)


@pytest.mark.parametrize("multiplier", [{"Benign": 0.5, "Early": 2, "Pre": 2, "Pro": 2}, {"Benign": 2}])
def test_multipliers_below_one_or_missing_are_refused(smears, multiplier):
    images, index = smears
    with pytest.raises(ValueError, match=r"augmentation\.multiplier"):
        augment_training_split(images, index, stain_reference(images), augmentation(PAPER, multiplier), SEED)


def test_views_come_from_training_images_only_and_view_0_is_the_source(smears):
    images, index = smears
    held_out_ids = {"Original/Benign/WBC-Benign-900.jpg", "Original/Pro/WBC-Pro-901.jpg"}
    views, views_index = augment_training_split(images, index, stain_reference(images), augmentation(), SEED)
    assert set(views_index["source_id"]) == set(index["image_id"])
    assert set(views_index["source_id"]).isdisjoint(held_out_ids)
    assert list(views_index.columns) == [
        "view_id", "source_id", "label", "label_index", "group", "view", "symmetry",
    ]  # fmt: skip
    assert (views_index["symmetry"] == np.where(views_index["view"] == 0, 0, -1)).all()
    assert (views_index["view_id"] == views_index["source_id"] + "#" + views_index["view"].astype(str)).all()
    assert views_index["view_id"].is_unique
    inherited = ["label", "label_index", "group"]
    for row, source in index.iterrows():
        of_source = views_index.index[views_index["source_id"] == source["image_id"]]
        assert list(views_index.loc[of_source, "view"]) == list(range(len(of_source)))
        assert (views_index.loc[of_source, inherited] == source[inherited]).all().all()
        assert np.array_equal(views[of_source[0]], images[row])
        assert not any(np.array_equal(views[later], images[row]) for later in of_source[1:])


def _symmetry_of(image: np.ndarray, number: int) -> np.ndarray:
    turned = np.rot90(image, number % 4, axes=(0, 1))
    return turned[:, ::-1] if number >= 4 else turned


def test_dihedral_views_are_the_8_exact_symmetries_in_place_of_random_views(smears):
    images, index = smears
    views, views_index = augment_training_split(
        images, index, stain_reference(images), augmentation(dihedral=True), SEED
    )
    # A multiplier of 3.5 asks for fewer views than the 8 symmetries: every image gets all 8, no more.
    assert len(views) == 8 * len(index)
    for row, source in index.iterrows():
        of_source = views_index.index[views_index["source_id"] == source["image_id"]]
        assert views_index.loc[of_source, "symmetry"].tolist() == list(range(8))
        for view, number in zip(of_source, range(8), strict=True):
            assert np.array_equal(views[view], _symmetry_of(images[row], number)), number
    # Test-time augmentation numbers the symmetries the same way: its view k is symmetry k here.
    first = views_index.index[views_index["source_id"] == index["image_id"].iloc[0]]
    for number in range(8):
        turned = keras.ops.convert_to_numpy(DihedralView.of_symmetry(number)(images[:1].astype(np.float32)))
        assert np.array_equal(turned[0], views[first[number]]), number


def test_a_random_stain_recolours_every_view_but_the_source(smears):
    """Stain augmentation reaches the exact symmetries too (the default views), never the source: each
    view keeps its symmetry's cells and takes a stain drawn around the training images'."""
    images, index = smears
    stained = augmentation({**ALL_OFF, "stain": 1.0}, dihedral=True)
    views, views_index = augment_training_split(images, index, stain_reference(images), stained, SEED)
    plain, _ = augment_training_split(
        images, index, stain_reference(images), augmentation(dihedral=True), SEED
    )
    source = (views_index["view"] == 0).to_numpy()
    assert np.array_equal(views[source], plain[source])
    changed = np.abs(views[~source].astype(int) - plain[~source].astype(int)).mean(axis=(1, 2, 3))
    assert (changed > 1).all()
    # The stains vary from view to view, around the training images' own.
    means, _ = stain_statistics(views[~source])
    assert means.std(axis=0).min() > 0.5
    again, _ = augment_training_split(images, index, stain_reference(images), stained, SEED)
    assert np.array_equal(views, again)


def test_dihedral_views_beyond_the_eighth_are_random_transforms(smears):
    images, index = smears
    views, views_index = augment_training_split(
        images, index, stain_reference(images), augmentation(multiplier=10, dihedral=True), SEED
    )
    for row, source in index.iterrows():
        of_source = views_index.index[views_index["source_id"] == source["image_id"]]
        assert len(of_source) == 10
        assert views_index.loc[of_source, "symmetry"].tolist() == [*range(8), -1, -1]
        assert not any(np.array_equal(views[view], images[row]) for view in of_source[8:])


def test_same_seed_gives_byte_identical_views_and_another_seed_other_views(smears):
    images, index = smears
    first, first_index = augment_training_split(
        images, index, stain_reference(images), augmentation(EVERY_TRANSFORM), SEED
    )
    again, again_index = augment_training_split(
        images, index, stain_reference(images), augmentation(EVERY_TRANSFORM), SEED
    )
    other, _ = augment_training_split(
        images, index, stain_reference(images), augmentation(EVERY_TRANSFORM), SEED + 1
    )
    assert first.tobytes() == again.tobytes()
    pd.testing.assert_frame_equal(first_index, again_index)
    transformed = first_index["view"].to_numpy() > 0
    assert not np.array_equal(first[transformed], other[transformed])


def test_memory_mapped_input_gives_the_same_views(smears, tmp_path):
    images, index = smears
    np.save(tmp_path / "train_images.npy", images)
    mapped = np.load(tmp_path / "train_images.npy", mmap_mode="r")
    from_memory, _ = augment_training_split(images, index, stain_reference(images), augmentation(), SEED)
    from_disk, _ = augment_training_split(mapped, index, stain_reference(images), augmentation(), SEED)
    assert np.array_equal(from_memory, from_disk)


@pytest.mark.parametrize("transforms", [PAPER, EVERY_TRANSFORM])
def test_dual_input_halves_get_the_same_transform(transforms):
    images, index = training_split({"Benign": 2, "Pro": 2}, channels=6)
    images[..., 3:] = images[..., :3]  # identical halves must stay identical
    views, _ = augment_training_split(images, index, stain_reference(images), augmentation(transforms), SEED)
    assert views.shape[1:] == (SIZE, SIZE, 6)
    assert np.array_equal(views[..., :3], views[..., 3:])
    # and each half gets exactly the transform an RGB image in its place would
    rgb_views, _ = augment_training_split(
        images[..., :3].copy(), index, stain_reference(images), augmentation(transforms), SEED
    )
    assert np.array_equal(views[..., :3], rgb_views)


def test_the_configured_defaults_run(smears):
    defaults = configured_parameters()["augmentation"]
    images, index = smears
    views, views_index = augment_training_split(images, index, stain_reference(images), defaults, SEED)
    # The default views are each image's 8 exact symmetries, more than the paper's multiplier of 4.3.
    assert defaults["dihedral_views"] and max(defaults["multiplier"].values()) <= 8
    expected = (8 * index["label"].value_counts()).to_dict()
    assert views_index["label"].value_counts().to_dict() == expected
    assert (views_index["symmetry"] >= 0).all()
    assert len(views) == len(views_index)
    assert [type(layer).__name__ for layer in build_augmenter(defaults["transforms"], SEED).layers] == [
        "RandomRotation", "RandomShear", "RandomZoom", "RandomFlip",
    ]  # fmt: skip


@pytest.mark.parametrize("channels", [3, 6])
def test_examples_figure_shows_a_row_per_class(channels):
    images, index = training_split({"Benign": 2, "Early": 1, "Pre": 1, "Pro": 2}, channels=channels)
    views, views_index = augment_training_split(images, index, stain_reference(images), augmentation(), SEED)
    figure = plot_augmentation_examples(views, views_index, examples_per_class=3)
    try:
        assert isinstance(figure, Figure)
        assert len(figure.axes) == 4 * (1 + 3)
        assert sum(bool(ax.images) for ax in figure.axes) == 4 * (1 + 3)
    finally:
        plt.close(figure)
