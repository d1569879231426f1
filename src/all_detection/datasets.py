"""Catalog datasets kedro-datasets and kedro-mlflow lack: numpy arrays stored as `.npy` and loaded
memory-mapped, and MLflow child runs nested under the run kedro-mlflow opened."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from kedro.io import AbstractDataset, DatasetError
from mlflow.entities import Metric

from all_detection.core.arrays import release_pages


class NumpyArrayDataset(AbstractDataset[np.ndarray, np.ndarray]):
    """One numpy array in a `.npy` file, loaded memory-mapped so a run pages in only what it reads.

    Image stacks of a whole split (thousands of 224x224x3 uint8 images) are read batch by batch during
    training instead of being decoded from JPEG every epoch or held twice in memory. Saving writes to a
    temporary file and renames it, so a crash never leaves a half-written array behind.

    Example catalog entry::

        train_images:
          type: all_detection.datasets.NumpyArrayDataset
          filepath: data/05_model_input/train_images.npy
    """

    _SLAB_BYTES = 64 * 2**20

    def __init__(self, filepath: str, mmap_mode: str | None = "r", metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self._mmap_mode = mmap_mode
        self.metadata = metadata

    def load(self) -> np.ndarray:
        return np.load(self._filepath, mmap_mode=self._mmap_mode, allow_pickle=False)

    def save(self, data: np.ndarray) -> None:
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        partial = self._filepath.with_name(f".{self._filepath.name}.partial")
        data = np.asanyarray(data)  # a memory map stays one, so its pages can be released
        if data.ndim == 0 or data.size == 0:
            with partial.open("wb") as file:
                np.save(file, np.asarray(data), allow_pickle=False)
        else:
            # Copied a slab at a time, releasing the pages of both, so saving a memory-mapped stack of
            # a few gigabytes never holds more than a slab of it in this process's memory.
            written = np.lib.format.open_memmap(partial, mode="w+", dtype=data.dtype, shape=data.shape)
            rows = max(1, self._SLAB_BYTES // max(data[:1].nbytes, 1))
            for start in range(0, len(data), rows):
                written[start : start + rows] = data[start : start + rows]
                release_pages(data)
                release_pages(written)
            written.flush()
            del written
        partial.replace(self._filepath)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "mmap_mode": self._mmap_mode}


class MlflowChildRunsDataset(AbstractDataset[dict[str, dict[str, Any]], None]):
    """Each entry of a dictionary saved as an MLflow run of its own, nested under the run in progress.

    A study (one model per protocol, fold or input mode) is one `kedro run`, so kedro-mlflow opens one
    run for it; each model of the study becomes a child of that run, named by its key, so the MLflow UI
    shows the study as a parent with one comparable run per model. A value holds `params` (logged as
    parameters), `metrics` (`{name: {"value", "step"}}` or a list of those, kedro-mlflow's metric-history
    format), optional `tags`, and `reports` (`{file name: dict}`, logged as JSON under `reports/`).
    Without a run in progress (kedro-mlflow off) the children are top-level runs of the active
    experiment, tagged with the study. Write-only: read the runs back with `mlflow.search_runs`.

    Example catalog entry::

        protocol_runs:
          type: all_detection.datasets.MlflowChildRunsDataset
          study: protocol_comparison
    """

    # MLflow's log_batch takes at most 1000 metrics per call.
    _BATCH = 1000

    def __init__(self, study: str, metadata: dict[str, Any] | None = None):
        self._study = study
        self.metadata = metadata

    def load(self) -> None:
        raise DatasetError(
            f"The {self._study} runs are in MLflow: read them with mlflow.search_runs(filter_string="
            "\"tags.mlflow.parentRunId = '<run id>'\")"
        )

    def save(self, data: dict[str, dict[str, Any]]) -> None:
        parent = mlflow.active_run()
        client = mlflow.MlflowClient()
        for name, record in data.items():
            tags = {"study": self._study, **record.get("tags", {})}
            with mlflow.start_run(
                run_name=name,
                nested=parent is not None,
                experiment_id=parent.info.experiment_id if parent else None,
                tags=tags,
            ) as child:
                mlflow.log_params(record.get("params", {}))
                now = int(time.time() * 1000)
                metrics = [
                    Metric(key, float(point["value"]), now, int(point["step"]))
                    for key, points in record.get("metrics", {}).items()
                    for point in (points if isinstance(points, list) else [points])
                ]
                for start in range(0, len(metrics), self._BATCH):
                    client.log_batch(child.info.run_id, metrics=metrics[start : start + self._BATCH])
                for file_name, content in record.get("reports", {}).items():
                    mlflow.log_dict(content, f"reports/{file_name}")

    def _describe(self) -> dict[str, Any]:
        return {"study": self._study}
