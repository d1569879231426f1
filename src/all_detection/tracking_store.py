"""The project's MLflow store moves with the project folder.

MLflow writes every artifact location into `mlflow.db` as an absolute URI
(`file:///where/it/was/mlartifacts/<run>/artifacts`), so a project folder moved or copied elsewhere
would show runs without figures and fail to load `models:/` URIs, or, for a copy whose original
still exists, keep writing into the original's folder. `relocate_store` rewrites those locations to
the folder the project is in now. Every Kedro command that loads the project (`kedro run`,
`kedro mlflow ui`) does so first (`hooks.TrackingStoreHooks`); to do only that:

    python -m all_detection.tracking_store            # in the project folder
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

logger = logging.getLogger(__name__)

#: The columns of MLflow's SQL schema that hold artifact locations.
LOCATION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
    ("model_versions", "source"),
)


def relocate_store(database: Path, experiment: str, artifact_folder: Path) -> Path | None:
    """Point the store's artifact locations at `artifact_folder` where it holds another folder's.

    The experiment `experiment` says where its artifacts were put: if that is a folder of the same name
    somewhere else (the project was moved or copied), every location under it, in every experiment,
    run, logged model and model version, is rewritten to the same place under `artifact_folder`.
    Returns the folder it was, or None when nothing had to change (no such store or experiment, or its
    artifacts are already here, or kept elsewhere on purpose: a server, or a folder of another name).
    """
    if not database.is_file():
        return None
    here = artifact_folder.resolve()
    # The connection commits (its own context manager), then closes (closing).
    with closing(sqlite3.connect(database)) as connection, connection:
        row = connection.execute(
            "SELECT artifact_location FROM experiments WHERE name = ?", (experiment,)
        ).fetchone()
        if row is None or not str(row[0]).startswith("file://"):
            return None
        was = Path(str(row[0]).removeprefix("file://"))
        if was == here or was.name != here.name:
            return None
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table, column in LOCATION_COLUMNS:
            if table not in tables:
                continue
            for old, new in ((was.as_uri(), here.as_uri()), (str(was), str(here))):
                # The old folder itself or something under it, never a longer name; the table and
                # column names are the constants above.
                connection.execute(
                    f'UPDATE "{table}" SET "{column}" = ? || substr("{column}", ?) '
                    f'WHERE "{column}" = ? OR substr("{column}", 1, ?) = ?',
                    (new, len(old) + 1, old, len(old) + 1, f"{old}/"),
                )
    logger.warning(
        "The MLflow store %s recorded its artifacts in %s; this project is now at %s, and the store's "
        "artifact locations were rewritten to %s",
        database, was, artifact_folder.resolve().parent, here,
    )  # fmt: skip
    return was


def main(project: str = ".") -> None:
    """Relocate the store of the project at `project` as its conf/ (mlflow.yml) configures it."""
    from kedro.framework.session import KedroSession  # noqa: PLC0415
    from kedro.framework.startup import bootstrap_project  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = Path(project).resolve()
    bootstrap_project(path)
    with KedroSession.create(project_path=path) as session:
        session.load_context()  # TrackingStoreHooks relocates the store as the context is created
    print(f"The MLflow store of {path} points at its own artifacts.")


if __name__ == "__main__":
    main(*sys.argv[1:2])
