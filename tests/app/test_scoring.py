"""The page's pure parts: upload names made safe, class folders read, batches cut as the pipeline cuts
them, and the colour range that tells an image unlike the training images."""

from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np
import pandas as pd
import pytest

from all_detection.app.scoring import blast_mask_message, folder_label, folder_slices, safe_relative_path
from all_detection.shortcuts import colour_distance, fit_colour_range


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("smear.jpg", "smear.jpg"),
        ("lab/Benign/a.jpg", "lab/Benign/a.jpg"),
        ("../../etc/passwd", "etc/passwd"),
        ("/tmp/x.png", "tmp/x.png"),
        ("C:\\slides\\Pro\\b.jpg", "C:/slides/Pro/b.jpg"),
        ("./a/./b.jpg", "a/b.jpg"),
    ],
)
def test_an_upload_s_name_stays_inside_its_folder(name: str, safe: str):
    assert safe_relative_path(name) == PurePosixPath(safe)


@pytest.mark.parametrize("name", ["", "/", "../..", "./"])
def test_an_upload_with_no_name_left_is_refused(name: str):
    with pytest.raises(ValueError, match="no usable file name"):
        safe_relative_path(name)


def test_the_nearest_class_folder_labels_a_file():
    assert folder_label("Original/Pro/x.jpg") == "Pro"
    assert folder_label("lab/Early/2024/x.jpg") == "Early"
    assert folder_label("Benign.jpg") is None
    assert folder_label("misc/x.jpg") is None


def test_a_batch_is_cut_where_the_pipeline_cuts_its_batches():
    """Each slice holds `batch_size` usable images, quarantined rows riding along, so scoring slice
    by slice gives the model the batches `score_images` forms for the whole table."""
    status = ["quarantined", "ok", "ok", "quarantined", "ok", "ok", "ok", "quarantined"]
    files = pd.DataFrame({"status": status})
    slices = folder_slices(files, batch_size=2)
    assert [rows.tolist() for rows in slices] == [[0, 1, 2, 3], [4, 5], [6, 7]]
    usable = [int((files["status"].iloc[rows] == "ok").sum()) for rows in slices]
    assert usable == [2, 2, 1]
    assert folder_slices(pd.DataFrame({"status": []}), 8) == []


def test_the_colour_range_holds_images_like_its_own_and_not_others():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(42, 42))
    own = rng.normal(size=(400, 42)) @ mixing + 100
    colour_range = fit_colour_range(own, quantile=0.99, image_size=224)
    assert colour_range["images"] == 400 and colour_range["limit"] > 0
    alike = rng.normal(size=(2000, 42)) @ mixing + 100
    # About 1 in 100 images like the model's is beyond the out-of-fold 99% limit.
    beyond = np.mean(colour_distance(colour_range, alike) > colour_range["limit"])
    assert 0.0 <= beyond < 0.05
    shifted = alike + 3 * own.std(axis=0)  # every number three sds off: another stain
    assert np.all(colour_distance(colour_range, shifted) > colour_range["limit"])


def test_an_empty_blast_mask_is_said_to_mean_nothing_about_the_cells():
    assert blast_mask_message(0.0823) == "Blast mask (HSV, green outline): 8.2% of the image."
    empty = blast_mask_message(0.0004)
    assert empty.startswith("Blast mask: no stained cells found.") and "Pro" in empty
