"""Project settings: Kedro's defaults, plus deep-merged parameters and the hooks in a known order."""

from all_detection.parameters import SessionConfigLoader, merged_config
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
# they set, also in kedro-viz, which runs no hook (all_detection.parameters.shaping_parameters).
CONFIG_LOADER_CLASS = SessionConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment such as `demo` overrides single keys (`dataset.root`) without restating the rest.
    "merge_strategy": {"parameters": "soft", "globals": "soft"},
    # `${merge:${preprocessing},{input_mode: masked}}`: a section as configured with some keys replaced,
    # for the studies' variants (conf/base/parameters_input_mode_comparison.yml).
    "custom_resolvers": {"merge": merged_config},
}
