"""The ALL dataset's folder layout (Aria et al. 2021, Kaggle), shared by ingestion and the demo set."""

from __future__ import annotations

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

#: One probability column per class, in `CLASSES` order, wherever predictions are written or served.
PROBABILITY_COLUMNS: list[str] = [f"prob_{label}" for label in CLASSES]
