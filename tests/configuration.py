"""The project's configured parameters, loaded as `kedro run` loads them, for tests that run nodes with
the real defaults: Kedro's config loader with the project's settings (merge strategy, resolvers)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from all_detection import configuration
from all_detection.configuration import project_parameters

PROJECT = Path(__file__).resolve().parents[1]


def configured_parameters(env: str | None = None, **runtime_params: Any) -> dict[str, Any]:
    """Every parameter as a run in `env` sees it, with `runtime_params` applied as `--params` would.
    Without `env`, conf/base alone: a developer's conf/local does not change what the tests check."""
    return project_parameters(PROJECT, env or "base", runtime_params or None)


@contextlib.contextmanager
def session_configuration(**runtime_params: Any) -> Iterator[dict[str, Any]]:
    """Inside the block, the project's configuration as a Kedro session with these `--params` makes it
    (the config loader of settings.py, conf/base only): the pipelines registered meanwhile take their
    shape from it, as they do in `kedro run`. Yields its parameters; afterwards, pipelines follow
    whatever configured them before."""
    previous = configuration._session_configuration
    loader = configuration.SessionConfigLoader(
        str(PROJECT / configuration.CONF_SOURCE), env="base", runtime_params=runtime_params or None,
        **configuration.CONFIG_LOADER_ARGS,
    )  # fmt: skip
    try:
        yield loader["parameters"]
    finally:
        configuration._session_configuration = previous
