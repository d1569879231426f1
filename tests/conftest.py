"""Shared fixtures: a folder of defective files and a throwaway copy of the project's configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.defects import write_defective_dataset
from tests.projects import PROJECT_ROOT, copy_project


@pytest.fixture
def defective_dataset(tmp_path: Path) -> tuple[Path, dict[str, str | None]]:
    root = tmp_path / "ALL"
    return root, write_defective_dataset(root)


@pytest.fixture
def project_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the project's configuration in a temporary folder, made the working directory."""
    project = copy_project(tmp_path / "project")
    monkeypatch.chdir(project)
    return project


@pytest.fixture(scope="session", autouse=True)
def no_stray_mlruns():
    """The tests keep their MLflow stores and artifacts in temporary folders, never in the checkout."""
    stray = PROJECT_ROOT / "mlruns"
    existed = stray.exists()
    yield
    assert existed or not stray.exists(), "a test wrote MLflow artifacts to ./mlruns in the project root"
