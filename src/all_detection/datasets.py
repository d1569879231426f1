"""Catalog datasets kedro-datasets and kedro-mlflow lack: a folder of images read without following
links, a Keras model that an MLflow model can stand in for, numpy arrays stored as `.npy` and loaded
memory-mapped, MLflow child runs nested under the run kedro-mlflow opened, and the trained model's
registration in MLflow."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

import mlflow
import numpy as np
from kedro.io import AbstractDataset, DatasetError
from mlflow.entities import Metric

from all_detection.checks import HOW_TO_GET_A_MODEL
from all_detection.core.arrays import release_pages
from all_detection.image_io import ImageFolder, walk_without_following_links
from all_detection.provenance import mlflow_dataset

logger = logging.getLogger(__name__)


class ImageFolderDataset(AbstractDataset[dict[str, bytes], ImageFolder]):
    """A folder of image files in any layout, as `all_detection.image_io.ImageFolder`: its files listed
    and read without following links, each judged and decoded through the one gate with the run's
    limits (the `ingestion` parameters). Loading reads nothing yet: nodes read the files they need.

    Saving writes a whole folder from `{relative posix path: file bytes}` (the demo's synthetic set):
    only into a new folder or one this dataset wrote before (a `<folder>.contents.json` beside it, not
    inside it where it would be counted, records what it wrote), so nobody's images are ever
    overwritten. A folder already holding exactly that content is left as it is; otherwise the content
    is written beside the folder and swapped in, under a lock, so a concurrent run never sees half a
    folder.

    Example catalog entry::

        raw_images:
          type: all_detection.datasets.ImageFolderDataset
          path: data/01_raw/ALL
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    @property
    def path(self) -> Path:
        return self._path

    def load(self) -> ImageFolder:
        return ImageFolder(self._path)

    def writable(self) -> str | None:
        """Why saving here would be refused (the folder holds files this dataset did not write), or None."""
        # Before this dataset, the demo's hook recorded its recipe beside the folder it wrote.
        earlier_record = self._path.with_name(f"{self._path.name}.synthetic.json")
        if self._path.exists() and not (self._contents_file.exists() or earlier_record.exists()):
            return (
                f"'{self._path}' exists and was not written by this project, so it is never written to "
                "(someone's images?)"
            )
        return None

    def save(self, data: dict[str, bytes]) -> None:
        refusal = self.writable()
        if refusal:
            raise DatasetError(f"{refusal}; write to a new folder instead.")
        outside = [path for path in map(PurePosixPath, data) if path.is_absolute() or ".." in path.parts]
        if outside:
            raise DatasetError(f"{outside[:3]} is not a path inside the folder")
        contents = {path: hashlib.sha256(content).hexdigest() for path, content in sorted(data.items())}
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._path.with_name(f"{self._path.name}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._path.is_dir() and self._folder_contents() == contents:
                return
            incoming = self._path.with_name(f".{self._path.name}.partial-{os.getpid()}")
            shutil.rmtree(incoming, ignore_errors=True)
            for relative, content in data.items():
                target = incoming / PurePosixPath(relative)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            # The record goes first: after a crash the folder is still known as this dataset's, and the
            # next save compares what the folder holds, not the record, so it finishes the job.
            self._contents_file.write_text(json.dumps(contents, indent=1))
            if self._path.exists():
                shutil.rmtree(self._path)
            incoming.rename(self._path)

    @property
    def _contents_file(self) -> Path:
        return self._path.with_name(f"{self._path.name}.contents.json")

    def _folder_contents(self) -> dict[str, str]:
        """The SHA-256 of each file the folder holds now, by relative path (links not followed)."""
        files = (self._path / relative for relative in walk_without_following_links(self._path))
        return {
            path.relative_to(self._path).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(files)
            if path.is_file() and not path.is_symlink()
        }

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class KerasModelDataset(AbstractDataset[Any, Any]):
    """A Keras 3 model in a `.keras` file, loaded in safe mode with the project's custom layers
    registered; or, when `model_uri` is set, loaded from that MLflow model (or any artifact URI or
    local path) instead, for runs that score a model rather than train one.

    An MLflow model is downloaded to a temporary folder and the one `.keras` file inside it loaded;
    for the project's registered pyfunc models that is the file the pyfunc serves, so both sources give
    the same Keras model. Saving writes the file beside its place and renames it there, so an
    interrupted save never leaves half a model; it always writes `filepath`, never the MLflow model.
    A model that cannot be found or read fails with a message saying how to get one.

    Example catalog entry::

        model:
          type: all_detection.datasets.KerasModelDataset
          filepath: data/06_models/model.keras
          model_uri: ${runtime_params:inference.model_uri, null}
    """

    def __init__(self, filepath: str, model_uri: str | None = None, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self._model_uri = str(model_uri) if model_uri else None
        self.metadata = metadata

    @property
    def model_uri(self) -> str | None:
        return self._model_uri

    @property
    def filepath(self) -> Path:
        return self._filepath

    def load(self) -> Any:
        if self._model_uri:
            return self._load_from_mlflow(self._model_uri)
        if not self._filepath.is_file():
            raise DatasetError(f"No trained model at '{self._filepath}'. {HOW_TO_GET_A_MODEL}")
        return _load_keras_file(self._filepath, str(self._filepath))

    def save(self, data: Any) -> None:
        import keras  # noqa: PLC0415 - only where models are saved or loaded

        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        partial = self._filepath.with_name(f".{self._filepath.stem}.partial.keras")
        keras.models.save_model(data, partial)
        partial.replace(self._filepath)

    def _load_from_mlflow(self, uri: str) -> Any:
        with tempfile.TemporaryDirectory(prefix="all_detection_model_") as folder:
            try:
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder))
            except Exception as error:  # MLflow raises its own, OSError or requests' errors by store kind
                raise DatasetError(
                    f"Could not fetch the model '{uri}' from MLflow at {mlflow.get_tracking_uri()} "
                    f"({type(error).__name__}: {error}). {HOW_TO_GET_A_MODEL}"
                ) from None
            if local.is_file():
                candidates = [local] if local.suffix == ".keras" else []
            else:
                # A pyfunc model also carries the project's code (code_paths); its artifacts hold the model.
                candidates = sorted(
                    path for path in local.rglob("*.keras") if path.relative_to(local).parts[0] != "code"
                )
            if len(candidates) != 1:
                found = [str(path.relative_to(local.parent)) for path in candidates]
                raise DatasetError(
                    f"MLflow model '{uri}' should hold exactly one .keras file; found {found or 'none'}. "
                    f"{HOW_TO_GET_A_MODEL}"
                )
            return _load_keras_file(candidates[0], uri)

    def _exists(self) -> bool:
        return bool(self._model_uri) or self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "model_uri": self._model_uri}


def _load_keras_file(path: Path, source: str) -> Any:
    import keras  # noqa: PLC0415

    import all_detection.core.model  # noqa: F401, PLC0415 - registers the custom layers before loading

    try:
        model = keras.models.load_model(path, safe_mode=True)
    except Exception as error:  # a wrong or damaged file fails in zipfile, h5py or Keras' deserialiser
        raise DatasetError(
            f"'{source}' could not be loaded as a Keras model ({type(error).__name__}: {error}). "
            f"{HOW_TO_GET_A_MODEL}"
        ) from None
    logger.info("Loaded model from %s: input %s", source, model.input_shape)
    return model


class MlflowModelRegistrationDataset(AbstractDataset[Any, dict[str, Any]]):
    """The trained model registered in MLflow: saving a `serving.ServableModel` logs it to the run in
    progress as a pyfunc from code (`served_model.py`, no pickle) with its signature and input example,
    registers it as a new version of the registered model it names (`all_detection`, or
    `all_detection_synthetic` for a model of synthetic data), and writes the record of that version to
    `filepath`; loading reads the record back (`{"registered", "name", "version", "model_uri",
    "model_id", ...}`), for the step that describes the version and moves the `champion` alias.
    Without a run in progress (tracking off) nothing is logged and the record says so.

    kedro-mlflow's model datasets take the signature from static configuration; here it follows the
    trained image size, so the model is logged by `serving.register_model`.

    Example catalog entry::

        model_registration:
          type: all_detection.datasets.MlflowModelRegistrationDataset
          filepath: data/08_reporting/model_registration.json
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def save(self, data: Any) -> None:
        from all_detection.serving import register_model  # noqa: PLC0415 - imports Keras and MLflow's pyfunc

        record = register_model(data.model, data.example_images, data.registered_name, data.colour_range)
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        self._filepath.write_text(json.dumps(record, indent=2))

    def load(self) -> dict[str, Any]:
        return json.loads(self._filepath.read_text())

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class NumpyArrayDataset(AbstractDataset[np.ndarray, np.ndarray]):
    """One numpy array in a `.npy` file, loaded memory-mapped so a run pages in only what it reads.

    Image stacks of a whole split (thousands of 224x224x3 uint8 images) are read batch by batch during
    training instead of being decoded from JPEG every epoch or held twice in memory. Saving writes to a
    temporary file and renames it, so a crash never leaves a half-written array behind.

    Example catalog entry::

        train_images:
          type: all_detection.datasets.NumpyArrayDataset
          filepath: data/03_primary/train_images.npy
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


class MlflowRunDataDataset(AbstractDataset[dict[str, Any], None]):
    """What a run saw, logged with the MLflow run in progress: `params` as its parameters (the manifest's
    digest and counts, `data.*`) and `rows` (the manifest's rows) as the run's MLflow dataset, the
    Datasets column of the UI, named after the folder `source` and whose digest is the manifest's, so
    two runs on different data never look alike. Without a run in progress (tracking off) nothing is
    logged. Write-only: the manifest itself is the catalog's `manifest`.

    Example catalog entry::

        data_provenance:
          type: all_detection.datasets.MlflowRunDataDataset
    """

    def __init__(self, context: str = "training", metadata: dict[str, Any] | None = None):
        self._context = context
        self.metadata = metadata

    def save(self, data: dict[str, Any]) -> None:
        if mlflow.active_run() is None:
            return
        params = data["params"]
        mlflow.log_params(params)
        dataset = mlflow_dataset(data["rows"], data["source"], params["data.manifest_sha256"])
        mlflow.log_input(dataset, context=self._context)

    def load(self) -> None:
        raise DatasetError("A run's data record is in MLflow (its data.* parameters and its dataset); "
                           "the manifest itself is the catalog's manifest")  # fmt: skip

    def _describe(self) -> dict[str, Any]:
        return {"context": self._context}


class MlflowChildRunsDataset(AbstractDataset[dict[str, dict[str, Any]], None]):
    """Each entry of a dictionary saved as an MLflow run of its own, nested under the run in progress.

    A study (one model per protocol, fold or input mode) is one `kedro run`, so kedro-mlflow opens one
    run for it; each model of the study becomes a child of that run, named by its key, so the MLflow UI
    shows the study as a parent with one comparable run per model. A value holds `params` (logged as
    parameters), `metrics` (`{name: {"value", "step"}}` or a list of those, kedro-mlflow's metric-history
    format), optional `tags`, and `reports` (`{file name: dict or text}`, logged under `reports/` as JSON
    or as the text it is).
    Without a run in progress (kedro-mlflow off) the children are top-level runs of the active
    experiment, tagged with the study. Write-only: read the runs back with `mlflow.search_runs`.

    Example catalog entry::

        protocol_runs:
          type: all_detection.datasets.MlflowChildRunsDataset
          study: protocol_comparison
    """

    def __init__(self, study: str, metadata: dict[str, Any] | None = None):
        self._study = study
        self.metadata = metadata

    def load(self) -> None:
        raise DatasetError(
            f"The {self._study} runs are in MLflow: read them with mlflow.search_runs(filter_string="
            "\"tags.mlflow.parentRunId = '<run id>'\")"
        )

    def save(self, data: dict[str, dict[str, Any]]) -> None:
        from all_detection.serving import log_metrics  # noqa: PLC0415 - imports Keras

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
                log_metrics(client, child.info.run_id, metrics)
                for file_name, content in record.get("reports", {}).items():
                    if isinstance(content, str):
                        mlflow.log_text(content, f"reports/{file_name}")
                    else:
                        mlflow.log_dict(content, f"reports/{file_name}")

    def _describe(self) -> dict[str, Any]:
        return {"study": self._study}


#: What a run that needs Spark is told where pyspark is missing (the dataset below, the Spark hook).
SPARK_NOT_INSTALLED = (
    'Spark is not installed: pip install -e ".[spark]" (pyspark), and a Java runtime, 17 or later '
    "(e.g. apt install openjdk-17-jre-headless)."
)


class OptionalSparkDataset(AbstractDataset[Any, Any]):
    """kedro-datasets' `spark.SparkDatasetV2`, made only when it is first loaded or saved.

    pyspark is the `spark` extra, and kedro-mlflow makes every dataset of the catalog when a run starts,
    whatever its pipeline: with kedro-datasets' class in the catalog directly, every `kedro run`
    without pyspark would fail. Its arguments are SparkDatasetV2's, passed on unchanged.
    """

    def __init__(self, metadata: dict[str, Any] | None = None, **arguments: Any):
        self._arguments = arguments
        self._dataset: AbstractDataset | None = None
        self.metadata = metadata

    def _spark_dataset(self) -> AbstractDataset:
        if self._dataset is None:
            try:
                from kedro_datasets.spark import SparkDatasetV2  # noqa: PLC0415
            except ImportError:
                raise DatasetError(SPARK_NOT_INSTALLED) from None
            self._dataset = SparkDatasetV2(**self._arguments)
        return self._dataset

    def load(self) -> Any:
        return self._spark_dataset().load()

    def save(self, data: Any) -> None:
        self._spark_dataset().save(data)

    def _exists(self) -> bool:
        return self._spark_dataset().exists()

    def _describe(self) -> dict[str, Any]:
        return {key: value for key, value in self._arguments.items() if key != "credentials"}
