"""Project settings: Kedro's defaults, plus deep-merged parameters and the hooks in a known order."""

from all_detection import configuration
from all_detection.quiet import silence_known_noise

# Before the libraries load: see all_detection.quiet.
silence_known_noise()

from kedro_mlflow.framework.hooks import MlflowHook  # noqa: E402

from all_detection.hooks import (  # noqa: E402
    ParameterCheckHooks,
    RunEndingHooks,
    RunRecordHooks,
    RunSummaryHooks,
    SparkHooks,
    TrackingStoreHooks,
)

# Hooks run last-in-first-out: parameters and folders are checked first (a run that cannot work leaves
# no half-open MLflow run behind), the MLflow store is made (under a lock) before kedro-mlflow opens its
# run, the run is tagged once it is open, and interrupts are caught around it all.
# kedro-mlflow is therefore registered here, once, instead of through its plugin entry point.
HOOKS = (
    RunEndingHooks(),
    RunRecordHooks(),
    MlflowHook(),
    TrackingStoreHooks(),
    ParameterCheckHooks(),
    RunSummaryHooks(),
    SparkHooks(),
)
# The distribution name is spelt either way, depending on how the wheel was built.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-mlflow", "kedro_mlflow")

# Kedro's OmegaConfigLoader, remembering the session's --env and --params for the pipelines whose shape
# they set, also in kedro-viz, which runs no hook; its settings (merge strategy, the `merge` resolver)
# live with it in all_detection.configuration, which also reads parameters outside a session.
CONFIG_LOADER_CLASS = configuration.SessionConfigLoader
CONFIG_LOADER_ARGS = configuration.CONFIG_LOADER_ARGS
