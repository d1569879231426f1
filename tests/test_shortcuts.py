"""The shortcut audit's cues and counterfactual smears (`all_detection.shortcuts`) on synthetic smears."""

from __future__ import annotations

import numpy as np

from all_detection.core.stain import stain_statistics
from all_detection.shortcuts import (
    COLOUR_STATISTICS,
    colour_statistics,
    corner_boxes,
    corner_mask,
    corner_patches,
    flatten_background,
    grey_levels,
    paint_corners,
    recoloured,
    thumbnail,
)
from all_detection.synthetic import render_smear


def smear(label: str = "Pre", size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    return render_smear(label, np.random.default_rng(7), size)


def test_the_cues_have_their_sizes_and_no_cell_shapes():
    rgb, _ = smear()
    assert colour_statistics(rgb).shape == (COLOUR_STATISTICS,) == (42,)
    assert corner_patches(rgb, 0.15, side=6).shape == (4 * 6 * 6 * 3,)
    assert thumbnail(rgb, side=8).shape == (8 * 8 * 3,)
    # Global colour does not see where anything is: a mirror image has the same statistics.
    np.testing.assert_allclose(colour_statistics(rgb[:, ::-1]), colour_statistics(rgb), rtol=1e-5)


def test_painting_the_corners_removes_the_scale_bar_label_and_nothing_else():
    rgb, _ = smear()
    side = round(0.15 * 224)
    assert corner_boxes(224, 224, 0.15)[-1] == (slice(224 - side, 224), slice(224 - side, 224))
    assert corner_mask(224, 224, 0.15).sum() == 4 * side * side
    painted = paint_corners(rgb, 0.15)
    # The synthetic label is a white box in the bottom-right corner: it is gone.
    assert (rgb[-18:-7, -29:-6] >= 240).mean() > 0.5
    assert (painted[-side:, -side:] == painted[-1, -1]).all()
    assert np.array_equal(painted[~corner_mask(224, 224, 0.15)], rgb[~corner_mask(224, 224, 0.15)])


def test_flattening_keeps_the_cells_and_makes_the_rest_one_colour():
    rgb, cells = smear()
    flat = flatten_background(rgb, cells)
    assert np.array_equal(flat[cells], rgb[cells])
    assert len(np.unique(flat[~cells].reshape(-1, 3), axis=0)) == 1


def test_grey_levels_have_no_hue():
    grey = grey_levels(smear()[0])
    assert grey.shape == (224, 224, 3) and grey.dtype == np.uint8
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_recolouring_gives_another_smears_stain():
    rgb, _ = smear("Benign")
    donor, _ = smear("Pro")
    donor_mean, donor_sd = stain_statistics(donor[None])
    moved = recoloured(rgb, donor_mean[0], donor_sd[0])
    assert moved.dtype == np.uint8
    mean, sd = stain_statistics(moved[None])
    np.testing.assert_allclose(mean[0], donor_mean[0], atol=1.0)
    np.testing.assert_allclose(sd[0], donor_sd[0], atol=1.0)
