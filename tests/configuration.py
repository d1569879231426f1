"""The project's configured parameters, loaded as `kedro run` loads them, for tests that run nodes with
the real defaults: Kedro's config loader with the project's settings (merge strategy, resolvers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from all_detection.parameters import project_parameters

PROJECT = Path(__file__).resolve().parents[1]


def configured_parameters(env: str | None = None, **runtime_params: Any) -> dict[str, Any]:
    """Every parameter as a run in `env` sees it, with `runtime_params` applied as `--params` would.
    Without `env`, conf/base alone: a developer's conf/local does not change what the tests check."""
    return project_parameters(PROJECT, env or "base", runtime_params or None)
