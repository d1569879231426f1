"""Throwaway copies of the project and real Kedro sessions in them, as users run the project."""

from __future__ import annotations

import shutil
from pathlib import Path

from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from tests.stores import new_store

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def copy_project(project: Path) -> Path:
    """The project's configuration and notebooks copied into `project`, its MLflow store pinned there.

    Runs write their data and MLflow store there, never into the developer's checkout.
    """
    project.mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(PROJECT_ROOT / name, project)
    shutil.copytree(PROJECT_ROOT / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    shutil.copytree(PROJECT_ROOT / "notebooks", project / "notebooks")
    (project / "conf" / "local").mkdir()
    (project / "src").mkdir()  # bootstrap_project wants it; the package itself comes installed
    # MLflow caches one store per tracking URI in the process, so the relative sqlite:///mlflow.db would
    # keep writing into the first test's project: pin each copy's store to its own absolute path.
    mlflow_yml = project / "conf" / "base" / "mlflow.yml"
    mlflow_yml.write_text(
        mlflow_yml.read_text().replace("sqlite:///mlflow.db", new_store(project / "mlflow.db"))
    )
    return project


def run_session(project: Path, env: str | None = None, pipeline: str = "ingestion", **params) -> None:
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env, runtime_params=params or None) as session:
        session.run(pipeline_names=[pipeline])
