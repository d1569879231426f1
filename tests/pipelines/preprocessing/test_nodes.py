"""Preprocessing: HSV masks on tiny synthetic arrays, model inputs per mode, and the split stacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from all_detection.image_io import ImageFolder
from all_detection.pipelines.ingestion.nodes import measure_segmentation_agreement, summarise_data_quality
from all_detection.pipelines.preprocessing.nodes import (
    plot_segmentation_examples,
    prepare_model_inputs,
)
from all_detection.segmentation import (
    AUTHORS_RECIPE,
    blast_mask,
    clean_mask,
    dataset_mask,
    dice_and_iou,
    dim_background,
    model_input,
    segment,
    stained_bounding_box,
)
from all_detection.synthetic import write_synthetic_dataset
from tests.configuration import configured_parameters
from tests.pipelines.ingestion.test_nodes import INGESTION, SPLIT, ingest

PREPROCESSING = configured_parameters()["preprocessing"]

SLIDE = (232, 232, 246)  # pale blue-grey background
BLAST = (118, 72, 196)  # violet nucleus
RED_CELL = (196, 196, 222)  # pale blue-grey red cell


def disc(size: int, centre: tuple[int, int], radius: int) -> np.ndarray:
    rows, columns = np.mgrid[:size, :size]
    return (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= radius**2


def smear(size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A purple disc on a pale background beside a red cell; returns the image and the disc."""
    image = np.full((size, size, 3), SLIDE, dtype=np.uint8)
    image[disc(size, (size - 12, 10), 7)] = RED_CELL
    blast = disc(size, (size // 2, size // 2), size // 5)
    image[blast] = BLAST
    return image, blast


def test_a_purple_disc_on_a_pale_background_is_isolated():
    image, blast = smear()
    for segmentation in (PREPROCESSING["segmentation"], AUTHORS_RECIPE):
        assert (blast_mask(image, segmentation) == blast).all()


def test_the_authors_quirk_equals_the_corrected_band_over_all_colours():
    levels = np.arange(0, 256, 3)
    every_colour = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(1, -1, 3)
    every_colour = every_colour.astype(np.uint8)
    quirk = blast_mask(every_colour, AUTHORS_RECIPE)
    true_colour_band = {"channel_order": "rgb", "hsv_ranges": [[[121, 50, 50], [132, 255, 255]]]}
    corrected = blast_mask(every_colour, true_colour_band)
    assert quirk.sum() > 1000
    assert (quirk & corrected).sum() / (quirk | corrected).sum() > 0.99


def test_unknown_channel_order_is_refused():
    with pytest.raises(ValueError, match="channel_order"):
        blast_mask(smear()[0], {"channel_order": "bgr", "hsv_ranges": []})


def test_cleanup_opens_fills_and_drops_specks():
    mask = disc(40, (20, 20), 10) & ~disc(40, (20, 20), 3)  # a ring with a hole (a pale nucleolus)
    mask[2, 2] = mask[2, 30:33] = True  # a speck and a thin line
    assert clean_mask(mask, fill_holes=True)[20, 20]
    assert not clean_mask(mask, opening_px=3)[2, 31]
    dropped = clean_mask(mask, min_area_px=5)
    assert not dropped[2, 2] and not dropped[2, 31] and dropped[20, 12]
    assert (clean_mask(mask) == mask).all()


def test_segment_dim_and_bounding_box():
    image, blast = smear()
    segmented = segment(image, blast)
    assert (segmented[~blast] == 0).all() and (segmented[blast] == image[blast]).all()
    dimmed = dim_background(image, blast, dilation_px=1, background_level=0.5)
    assert (dimmed[blast] == image[blast]).all()
    assert np.allclose(dimmed[~blast], image[~blast] * 0.5, atol=1)
    grown = dim_background(image, blast, dilation_px=5, background_level=0.5)
    assert (grown != dimmed).any(axis=-1).sum() > 0  # the dilated rim keeps its brightness
    rows, columns = np.nonzero(blast)
    assert stained_bounding_box(blast) == (columns.min(), rows.min(), columns.max() + 1, rows.max() + 1)
    assert stained_bounding_box(np.zeros_like(blast)) is None


def test_dice_and_iou_on_known_masks():
    first, second = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    first[:2] = True  # 8 pixels
    second[1:3] = True  # 8 pixels, 4 shared
    assert dice_and_iou(first, second) == (0.5, 4 / 12)
    assert dice_and_iou(first, first) == (1.0, 1.0)
    assert dice_and_iou(first, ~first) == (0.0, 0.0)
    assert dice_and_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == (1.0, 1.0)
    noisy_black = np.full((3, 3, 3), 12, np.uint8)
    noisy_black[1, 1] = (200, 90, 230)
    assert dataset_mask(noisy_black, 40).sum() == 1


@pytest.mark.parametrize(
    ("mode", "channels"), [("original", 3), ("segmented", 3), ("masked", 3), ("dual", 6)]
)
def test_model_input_shape_and_content_per_mode(mode, channels):
    image, blast = smear(64)
    prepared, mask = model_input(image, {**PREPROCESSING, "input_mode": mode, "image_size": 32})
    assert prepared.shape == (32, 32, channels) and prepared.dtype == np.uint8
    assert (mask == blast).all()
    if mode in ("segmented", "dual"):
        assert (prepared[0, 0, -3:] == 0).all()  # the background is gone
    if mode == "masked":
        assert prepared[0, 0].max() < SLIDE[0] * 0.5
    if mode in ("original", "dual"):
        assert (prepared[0, 0, :3] == SLIDE).all()


@pytest.mark.parametrize("size", [32, 27, 96])
def test_dual_input_is_the_original_and_segmented_inputs_stacked_at_any_size(size):
    # 64 to 27 or 96 is no integer factor: OpenCV's general resize takes at most 4 channels at once.
    image, _ = smear(64)
    settings = {**PREPROCESSING, "image_size": size}
    dual, _ = model_input(image, {**settings, "input_mode": "dual"})
    original, _ = model_input(image, {**settings, "input_mode": "original"})
    segmented, _ = model_input(image, {**settings, "input_mode": "segmented"})
    assert dual.shape == (size, size, 6)
    np.testing.assert_array_equal(dual, np.concatenate([original, segmented], axis=-1))


def test_unknown_input_mode_is_refused():
    with pytest.raises(ValueError, match="input_mode"):
        model_input(smear()[0], {**PREPROCESSING, "input_mode": "stacked"})


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("synthetic") / "ALL"
    write_synthetic_dataset(root, per_class=10, image_size=96, seed=5)
    return root, ingest(root)


def test_split_stacks_align_with_their_index_and_never_share_an_image(synthetic_set):
    root, manifest = synthetic_set
    outputs = prepare_model_inputs(
        manifest, ImageFolder(root), {**PREPROCESSING, "image_size": 32}, INGESTION
    )
    stacks, indexes = outputs[0::2], outputs[1::2]
    for split, stack, index in zip(("train", "val", "test"), stacks, indexes, strict=True):
        assert stack.shape == (len(index), 32, 32, 3) and stack.dtype == np.uint8
        assert (index["split"] == split).all()
        assert (index["label_index"] == index["label"].map(["Benign", "Early", "Pre", "Pro"].index)).all()
        assert ((index["bbox_x1"] > index["bbox_x0"]) | (index["bbox_x0"] == -1)).all()
    assert [len(index) for index in indexes] == [28, 4, 8]
    ids = [set(index["image_id"]) for index in indexes]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    first = indexes[0].iloc[0]
    source = np.asarray(Image.open(root / first["image_id"]).convert("RGB"))
    expected, _ = model_input(source, {**PREPROCESSING, "image_size": 32})
    assert (stacks[0][0] == expected).all()


@pytest.mark.parametrize(
    "segmentation", [AUTHORS_RECIPE, PREPROCESSING["segmentation"]], ids=["authors", "default"]
)
def test_segmentation_agreement_with_the_synthetic_sets_own_masks(synthetic_set, segmentation):
    root, manifest = synthetic_set
    preprocessing = {**PREPROCESSING, "segmentation": segmentation}
    agreement = measure_segmentation_agreement(manifest, ImageFolder(root), preprocessing, INGESTION)
    assert set(agreement) == {"Benign", "Early", "Pre", "Pro"}
    for label in ("Benign", "Early", "Pre"):
        assert agreement[label]["n"] == 10
        # The synthetic Segmented/ files were made with the authors' recipe, then JPEG-compressed.
        assert agreement[label]["dice_mean"] > 0.9, agreement[label]
        assert agreement[label]["dataset_mask_fraction"] > 0.01
    # Ingestion measures it and writes it into data_quality.json, the one report of the data.
    report = summarise_data_quality(manifest, agreement, {"root": str(root)}, SPLIT)
    assert report["segmentation_agreement"] == agreement and report["files"]["total"] == 80


def test_low_agreement_is_explained(synthetic_set):
    root, manifest = synthetic_set
    # A band that finds nothing the dataset's masks found: agreement collapses and says why.
    nothing = {"channel_order": "rgb", "hsv_ranges": [[[60, 200, 200], [61, 255, 255]]]}
    preprocessing = {**PREPROCESSING, "segmentation": nothing}
    agreement = measure_segmentation_agreement(manifest, ImageFolder(root), preprocessing, INGESTION)
    assert agreement["Early"]["dice_mean"] < 0.2
    assert "our masks cover much less" in agreement["Early"]["note"]


def test_segmentation_figure_has_four_panels_per_class(synthetic_set):
    root, manifest = synthetic_set
    figure = plot_segmentation_examples(manifest, ImageFolder(root), PREPROCESSING, INGESTION)
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 16
