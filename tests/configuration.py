"""The project's configured parameters, loaded as `kedro run` loads them, for tests that run nodes with
the real defaults: Kedro's config loader with the project's settings (merge strategy, resolvers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.config import OmegaConfigLoader

from all_detection.settings import CONFIG_LOADER_ARGS

CONF = Path(__file__).resolve().parents[1] / "conf"


def configured_parameters(env: str | None = None, **runtime_params: Any) -> dict[str, Any]:
    """Every parameter as a run in `env` sees it, with `runtime_params` applied as `--params` would.
    Without `env`, conf/base alone: a developer's conf/local does not change what the tests check."""
    loader = OmegaConfigLoader(
        str(CONF), env=env or "base", runtime_params=runtime_params or None, **CONFIG_LOADER_ARGS
    )
    return loader["parameters"]
