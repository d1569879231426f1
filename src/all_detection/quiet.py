"""Quiet logs: nothing in a run's log should look like a fault when none happened.

`silence_known_noise` runs first thing in the project's settings, which every `kedro` command in the
project loads before TensorFlow, MLflow or kedro-mlflow (whose import alone makes MLflow warn). A user
who wants these messages back sets the variable, warning filter or logger level before the project loads.
"""

import logging
import os
import re
import warnings
from pathlib import Path

# Messages from the libraries that report no fault of this project's: Kedro's and kedro-mlflow's own
# deprecations, MLflow asking kedro-mlflow's PythonModel for type hints at import, and MLflow failing
# to import its TensorFlow autologging while kedro-mlflow switches autologging off (it stays off).
KNOWN_WARNINGS = ("register_new_resolver() is deprecated", "Add type hints to the `predict` method")
# A study's report reads its runs' outputs by the names Kedro's namespacing gives them ("paper.metrics"),
# which Kedro warns about whenever a node outside the namespace names one.
STUDY_WARNINGS = ("One or more dataset names contain '.'",)
# Batch scoring on Spark: PySpark 4.3 warns on every pandas conversion that it does not yet fully
# support pandas 3 (the pipeline's Spark path is tested row for row against the inference pipeline's,
# tests/spark), and MLflow that `env_manager="local"` does not rebuild the training environment, which
# is the choice made on purpose (the executors run the project's own, pinned environment).
SPARK_WARNINGS = ("PySpark does not yet fully support pandas >= 3.0.0",)
SPARK_LOG_NOISE = ('with `env_manager="local"` does not recreate the same environment',)
KNOWN_NOISE_IN_LOGS = (*KNOWN_WARNINGS, *SPARK_WARNINGS, *SPARK_LOG_NOISE, "while enabling autologging")


class _KnownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in KNOWN_NOISE_IN_LOGS)


class _RetracedCopies(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def silence_known_noise() -> None:
    # TensorFlow probes CUDA at import and logs an error on a machine without a GPU driver, and its
    # data pipeline logs an op-attribute mismatch as an error; on such a machine only its fatal
    # messages show. (Two informational lines it prints before its logging starts cannot be hidden.)
    if not any(Path("/dev").glob("nvidia*")):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for message in KNOWN_WARNINGS:  # MLflow colours its message: match it anywhere, not at the start
        warnings.filterwarnings("ignore", message=f".*{re.escape(message)}", category=UserWarning)
    for message in STUDY_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=UserWarning)
    # MLflow shows its type-hint warning under its own "once" filter, which outranks any filter set
    # here; Kedro logs warnings through `py.warnings`, where this filter drops it.
    for message in SPARK_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=FutureWarning)
    for name in ("py.warnings", "mlflow.tracking.fluent", "mlflow.pyfunc"):
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _KnownNoise) for existing in logger.filters):
            logger.addFilter(_KnownNoise())
    # Each node that takes the catalog's `model` loads its own copy, and TensorFlow compiles each copy's
    # predict step once; past five copies in a run it calls that "excessive retracing", though no step
    # is compiled twice.
    tensorflow = logging.getLogger("tensorflow")
    if not any(isinstance(existing, _RetracedCopies) for existing in tensorflow.filters):
        tensorflow.addFilter(_RetracedCopies())
    # kedro-mlflow calls the relative artifact location (mlartifacts) a relative tracking URI at INFO.
    logging.getLogger("kedro_mlflow.config.kedro_mlflow_config").setLevel(logging.WARNING)
