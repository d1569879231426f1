"""The ALL dataset's layout (Aria et al. 2021, Kaggle) and the project's rules about it, each spelt once:
classes, folders, splits, input modes and their channels."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Class folder names in `Original/` and `Segmented/`, in the order of the model's outputs.
CLASSES: tuple[str, ...] = ("Benign", "Early", "Pre", "Pro")

#: File-name stem of each class as the Kaggle download spells it: `WBC-Malignant-Early-001.jpg`.
FILE_PREFIXES: dict[str, str] = {
    "Benign": "WBC-Benign",
    "Early": "WBC-Malignant-Early",
    "Pre": "WBC-Malignant-Pre",
    "Pro": "WBC-Malignant-Pro",
}

ORIGINAL_DIR = "Original"
SEGMENTED_DIR = "Segmented"
IMAGE_FOLDERS: tuple[str, ...] = (ORIGINAL_DIR, SEGMENTED_DIR)

#: A file's status in the manifest and in predictions: usable, or set aside with a reason.
OK = "ok"
QUARANTINED = "quarantined"


def usable_originals(files: pd.DataFrame) -> pd.Series:
    """Which rows of a file table or manifest are usable Originals: the images the split, the model
    inputs and every count of usable images are made of (a Segmented copy rides with its Original)."""
    return (files["status"] == OK) & (files["folder"] == ORIGINAL_DIR)


#: One probability column per class, in `CLASSES` order, wherever predictions are written or served.
PROBABILITY_COLUMNS: list[str] = [f"prob_{label}" for label in CLASSES]

#: A predictions table's columns (`inference`, `batch_scoring`, the page): each file's path and verdict,
#: the predicted class and each class's probability.
PREDICTION_COLUMNS: list[str] = ["path", "status", "reason", "predicted", *PROBABILITY_COLUMNS]

#: The detection view: Benign against any malignant stage, which is the positive class.
DETECTION_POSITIVE = "malignant (Early, Pre or Pro)"

#: The splits of the usable images, in the order they are stacked and reported.
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: What the network sees of a smear: the paper's `original`, `segmented` (stained cells on black),
#: `masked` (background dimmed) or `dual` (original and segmented stacked, the dataset authors' model).
INPUT_MODES: tuple[str, ...] = ("original", "segmented", "masked", "dual")
DUAL_INPUT = "dual"
RGB_CHANNELS = 3

#: How `preprocessing.segmentation` reads an image's channels for HSV: true colour (`rgb`), or as the
#: dataset's own Segmented/ images were made (`bgr_as_rgb`: the RGB conversion applied to OpenCV's BGR).
CHANNEL_ORDERS: tuple[str, ...] = ("rgb", "bgr_as_rgb")

#: What the model does with a smear's stain before it sees it (`preprocessing.stain_normalisation`):
#: nothing, or Reinhard's transfer to the training images' stain (`core.stain.StainNormalisation`).
STAIN_NORMALISATIONS: tuple[str, ...] = ("none", "reinhard")

#: How the model is trained (`training.mode`); the training pipeline tags each mode's own nodes with it.
TRAINING_MODES: tuple[str, ...] = ("cached", "online")

#: How training spreads over devices (`training.distribution`): `auto` (data-parallel over two or more
#: GPUs), `data_parallel` (every visible device, GPUs or forced host devices alike), `none`, or
#: `multi_worker` (several machines, TensorFlow's `MultiWorkerMirroredStrategy`).
DISTRIBUTIONS: tuple[str, ...] = ("auto", "data_parallel", "none", "multi_worker")


#: Cross-validation runs each fold as a namespace of the project's pipelines: `fold_1` ... `fold_k`.
FOLD_PREFIX = "fold_"


def fold_names(k: int) -> list[str]:
    return [f"{FOLD_PREFIX}{fold}" for fold in range(1, k + 1)]


def input_channels(input_mode: str) -> int:
    """Channels per image in a stack: 6 for the dual input, 3 otherwise."""
    return 2 * RGB_CHANNELS if input_mode == DUAL_INPUT else RGB_CHANNELS


def images_per_input(channels: int) -> int:
    """How many RGB images one stacked input holds: 2 for the dual input's 6 channels, else 1."""
    return channels // RGB_CHANNELS


def whole_images(index: pd.DataFrame) -> pd.DataFrame:
    """The rows of a split's index that are images as found, not augmented views (the paper protocol's
    splits hold views): `row` (position in the index and its stack), `path` (the file in the image
    folder), `label` and `label_index`."""
    rows = np.arange(len(index))
    if "view" in index:
        rows = rows[index["view"].to_numpy() == 0]
    paths = index["source_id"] if "source_id" in index else index["image_id"]
    return pd.DataFrame(
        {
            "row": rows,
            "path": paths.astype(str).to_numpy()[rows],
            "label": index["label"].astype(str).to_numpy()[rows],
            "label_index": index["label_index"].to_numpy(dtype=np.int64)[rows],
        }
    )
