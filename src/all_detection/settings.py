"""Project settings: Kedro's defaults, plus deep-merged parameters and the hooks in a known order."""

import logging
import os
import warnings
from pathlib import Path

# Quiet logs: nothing in a run's log should look like a fault when none happened. Set before the
# libraries load; a user who wants their messages back sets the variable or level first.
# TensorFlow probes CUDA at import and logs an error on a machine without a GPU driver, and its data
# pipeline logs an op-attribute mismatch as an error; on such a machine only its fatal messages show.
if not any(Path("/dev").glob("nvidia*")):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Deprecations inside Kedro, kedro-mlflow and MLflow that this project cannot act on.
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning)
warnings.filterwarnings("ignore", message=r".*Add type hints to the `predict` method", category=UserWarning)


class _DisablingAutologging(logging.Filter):
    """kedro-mlflow switches MLflow's autologging off (mlflow.yml), and MLflow reports a failure to
    import its TensorFlow integration while doing so: not an error, since autologging stays off."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "while enabling autologging" not in record.getMessage()


logging.getLogger("mlflow.tracking.fluent").addFilter(_DisablingAutologging())
# kedro-mlflow calls the relative artifact location (mlartifacts) a relative tracking URI at INFO.
logging.getLogger("kedro_mlflow.config.kedro_mlflow_config").setLevel(logging.WARNING)

from kedro_mlflow.framework.hooks import MlflowHook  # noqa: E402

from all_detection.hooks import (  # noqa: E402
    ParameterCheckHooks,
    RunEndingHooks,
    RunRecordHooks,
    RunSummaryHooks,
    SyntheticDemoHooks,
    TrackingStoreHooks,
)

# Hooks run last-in-first-out: parameters are checked first, the demo set is written and the MLflow
# store made (under a lock) before kedro-mlflow opens its run (a demo that cannot be written leaves no
# half-open run behind), the run is tagged once it is open, and interrupts are caught around it all.
# kedro-mlflow is therefore registered here, once, instead of through its plugin entry point.
HOOKS = (
    RunEndingHooks(),
    RunRecordHooks(),
    MlflowHook(),
    TrackingStoreHooks(),
    SyntheticDemoHooks(),
    ParameterCheckHooks(),
    RunSummaryHooks(),
)
# The distribution name is spelt either way, depending on how the wheel was built.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-mlflow", "kedro_mlflow")

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment such as `demo` overrides single keys (`dataset.root`) without restating the rest.
    "merge_strategy": {"parameters": "soft"},
}
