"""The project's configured parameters (conf/base), for tests that run nodes with the real defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONF = Path(__file__).resolve().parents[1] / "conf" / "base"


def configured_parameters() -> dict[str, Any]:
    """Every conf/base/parameters_*.yml merged, as Kedro merges them (their top-level keys differ)."""
    parameters: dict[str, Any] = {}
    for path in sorted(CONF.glob("parameters_*.yml")):
        parameters.update(yaml.safe_load(path.read_text()))
    return parameters
