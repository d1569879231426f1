"""Shared fixtures: a folder of defective files and a throwaway copy of the project's configuration."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.defects import write_defective_dataset

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def defective_dataset(tmp_path: Path) -> tuple[Path, dict[str, str | None]]:
    root = tmp_path / "ALL"
    return root, write_defective_dataset(root)


@pytest.fixture
def project_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the project's configuration in a temporary folder, made the working directory.

    Runs write their data and MLflow store there, never into the developer's checkout.
    """
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(PROJECT_ROOT / name, project)
    shutil.copytree(PROJECT_ROOT / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir()
    (project / "src").mkdir()  # bootstrap_project wants it; the package itself comes installed
    # MLflow caches one store per tracking URI in the process, so the relative sqlite:///mlflow.db would
    # keep writing into the first test's project: pin each copy's store to its own absolute path.
    mlflow_yml = project / "conf" / "base" / "mlflow.yml"
    mlflow_yml.write_text(
        mlflow_yml.read_text().replace("sqlite:///mlflow.db", f"sqlite:///{project}/mlflow.db")
    )
    monkeypatch.chdir(project)
    return project
