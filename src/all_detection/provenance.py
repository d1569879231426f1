"""What a run was trained and tested on, spelt once for every record that says it: the manifest's
digest and counts (MLflow parameters `data.*`), the MLflow dataset a run's Datasets column shows, and
whether two models can be compared by their test scores.

Two runs whose manifests have the same digest saw the same files, labels and split, so they were tested
on the same images; any other pair was not, and their test accuracies are not comparable.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import PurePosixPath
from typing import Any

import pandas as pd

from all_detection.layout import QUARANTINED, SPLITS, usable_originals

#: The manifest's columns that say which files a run saw, what they are and where each went.
DIGESTED_COLUMNS = ["path", "label", "status", "sha256", "split"]
#: MLflow keeps a dataset's digest in 36 characters: the manifest's SHA-256 shortened to 128 bits.
MLFLOW_DIGEST_LENGTH = 32


def manifest_sha256(manifest: pd.DataFrame) -> str:
    """The SHA-256 of the manifest's rows (`DIGESTED_COLUMNS`, in row order), as 64 hex digits."""
    rows = pd.util.hash_pandas_object(manifest[DIGESTED_COLUMNS], index=False)
    return hashlib.sha256(rows.to_numpy().tobytes()).hexdigest()


def manifest_provenance(manifest: pd.DataFrame) -> dict[str, Any]:
    """The manifest's digest and counts, as MLflow parameters (`data.*`)."""
    usable = manifest[usable_originals(manifest)]
    return {
        "data.manifest_sha256": manifest_sha256(manifest),
        "data.files": len(manifest),
        "data.quarantined": int((manifest["status"] == QUARANTINED).sum()),
        "data.usable_images": len(usable),
        **{f"data.{split}_images": int((usable["split"] == split).sum()) for split in SPLITS},
    }


def dataset_name(root: str) -> str:
    """The name a dataset goes by in MLflow: its folder's name (`ALL`, `demo_ALL`)."""
    return PurePosixPath(str(root).replace("\\", "/").rstrip("/")).name or str(root)


def mlflow_dataset(manifest: pd.DataFrame, root: str, sha256: str) -> Any:
    """The manifest as an MLflow dataset (`mlflow.log_input`): named after the dataset's folder, its
    source that folder, its digest the manifest's SHA-256 `sha256` (its first `MLFLOW_DIGEST_LENGTH`
    hex digits)."""
    import mlflow.data  # noqa: PLC0415

    with warnings.catch_warnings():
        # A local folder: MLflow registers its local source kind twice and says it chose one.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        return mlflow.data.from_pandas(
            manifest[DIGESTED_COLUMNS],
            source=str(root),
            name=dataset_name(root),
            digest=sha256[:MLFLOW_DIGEST_LENGTH],
        )
