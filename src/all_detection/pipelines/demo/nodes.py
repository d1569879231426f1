"""The demo's one node: synthetic smears laid out like the Kaggle download, for the image folder.

Real images cannot ship with the project (the dataset's authors forbid redistribution), so the demo
environment makes its own: seeded, byte-for-byte reproducible, and recorded as synthetic
(`dataset.synthetic`) in every report that follows.
"""

from __future__ import annotations

import logging
from typing import Any

from all_detection.synthetic import synthetic_files

logger = logging.getLogger(__name__)


def make_synthetic_smears(synthetic_dataset: dict[str, Any]) -> dict[str, bytes]:
    """The synthetic set's files, `{"Original/<class>/<name>.jpg": JPEG bytes}` with their Segmented
    twins, from `synthetic_files`' arguments (`demo.synthetic_dataset`: per_class, image_size, seed)."""
    files = synthetic_files(**synthetic_dataset)
    logger.info(
        "Demo: %d synthetic smear files (%s), made by the demo generator; not real data",
        len(files), ", ".join(f"{key} {value}" for key, value in synthetic_dataset.items()),
    )  # fmt: skip
    return files
