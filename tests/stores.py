"""Throwaway MLflow SQLite stores: each a copy of one empty store MLflow created in this test process.

MLflow makes a new SQLite store by creating and migrating its tables, about 3 s here; a copy of the
result is the same store in milliseconds. The store a user's first run creates is still made from
scratch once per process, here, and by the test of a fresh project's first runs."""

from __future__ import annotations

import atexit
import functools
import shutil
import sqlite3
import tempfile
from pathlib import Path

import mlflow


@functools.cache
def _empty_store() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="empty-mlflow-store-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    database = folder / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{database}").search_experiments()  # creates and migrates the tables
    return database


def new_store(database: Path) -> str:
    """A new, empty MLflow store at `database`, as MLflow makes it, and its tracking URI. Its Default
    experiment keeps artifacts in `mlruns/0` beside it, not in the folder the copied store was made in."""
    shutil.copyfile(_empty_store(), database)
    connection = sqlite3.connect(database)
    with connection:
        connection.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (str(database.parent / "mlruns" / "0"),),
        )
    connection.close()
    return f"sqlite:///{database}"
