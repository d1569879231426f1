"""The project's configuration as Kedro loads it: the config loader and its settings (which `settings.py`
hands to Kedro), the `merge` resolver, the parameters of a project read outside a session, the
`params:` inputs a session feeds, and the parameters that shape pipelines as they are registered."""

from __future__ import annotations

import functools
import os
import weakref
from pathlib import Path
from typing import Any

from kedro.config import OmegaConfigLoader
from kedro.utils import find_kedro_project

#: Where a project keeps its configuration (Kedro's default, which `settings.py` keeps).
CONF_SOURCE = "conf"


def merged_config(*sections: Any) -> Any:
    """The OmegaConf resolver `merge`: the sections deep-merged, later keys replacing earlier ones."""
    from omegaconf import OmegaConf  # noqa: PLC0415 - only the config loader calls it

    return OmegaConf.merge(*sections)


#: The config loader's settings (`settings.CONFIG_LOADER_ARGS`), also used to read a project's
#: parameters outside a session (`project_parameters`).
CONFIG_LOADER_ARGS: dict[str, Any] = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment such as `demo` overrides single keys (`dataset.root`) without restating the rest.
    "merge_strategy": {"parameters": "soft", "globals": "soft"},
    # `${merge:${preprocessing},{input_mode: masked}}`: a section as configured with some keys replaced,
    # for the studies' variants (conf/base/parameters_input_mode_comparison.yml).
    "custom_resolvers": {"merge": merged_config},
}

# The configuration of the newest Kedro session's context, while that context lives (a weak reference):
# Kedro calls `register_pipelines()` with no argument, so this is how the pipelines reach the session's
# --env and --params.
_session_configuration: weakref.ref[SessionConfigLoader] | None = None


class SessionConfigLoader(OmegaConfigLoader):
    """Kedro's config loader (settings.CONFIG_LOADER_CLASS), which a session makes for its context with
    its --env and --params: it remembers itself as the session's configuration, so the pipelines the
    session registers take their shape from them, in `kedro run` and in kedro-viz alike (which runs
    no hook: `kedro viz run --env demo` would otherwise shape them by KEDRO_ENV)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        global _session_configuration  # noqa: PLW0603 - one session per process at a time, as Kedro's
        _session_configuration = weakref.ref(self)

    @functools.cached_property
    def shaping_parameters(self) -> dict[str, Any]:
        """The session's parameters as its pipelines are registered, read from conf/ once: every
        pipeline that takes its shape from them asks (15 times a registration), and each
        `self["parameters"]` reads and merges the files again."""
        return self["parameters"]


def project_parameters(
    project: Path, env: str | None = None, runtime_params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The parameters of the project at `project` as a run in `env` sees them (base, then `env` or the
    default run environment), `runtime_params` applied as `--params` would: Kedro's config loader with
    the project's settings (merge strategy, the `merge` resolver), for code outside a Kedro session."""
    loader = OmegaConfigLoader(
        str(project / CONF_SOURCE), env=env, runtime_params=runtime_params, **CONFIG_LOADER_ARGS
    )
    return loader["parameters"]


def parameter_feed(parameters: dict[str, Any]) -> dict[str, Any]:
    """The `params:` inputs a Kedro context feeds a pipeline: `params:a` for each section and
    `params:a.b` for every key inside it, at any depth, for running nodes outside a session."""
    fed: dict[str, Any] = {}

    def add(name: str, value: Any) -> None:
        fed[f"params:{name}"] = value
        if isinstance(value, dict):
            for key, inner in value.items():
                add(f"{name}.{key}", inner)

    for key, value in parameters.items():
        add(key, value)
    return fed


def shaping_parameters(project_path: Path | None = None) -> dict[str, Any] | None:
    """The parameters that shape pipelines as they are registered (the training mode, the number of
    folds, the demo's synthetic set): the newest Kedro session's (its --env and --params, in `kedro run`
    and kedro-viz alike); outside a session (a notebook) the project's conf for KEDRO_ENV, read through
    Kedro's config loader with the project's settings; None outside a Kedro project."""
    session_configuration = _session_configuration() if _session_configuration else None
    if session_configuration is not None:
        return session_configuration.shaping_parameters
    project = project_path or find_kedro_project(Path.cwd())
    return None if project is None else project_parameters(project, os.environ.get("KEDRO_ENV"))


def writes_synthetic_set(parameters: dict[str, Any] | None) -> bool:
    """Whether the parameters ask for the demo's synthetic set in the image folder (conf/demo)."""
    return bool(((parameters or {}).get("demo") or {}).get("synthetic_dataset"))
