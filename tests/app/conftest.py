"""The smear page's fixtures, made once for its HTTP and browser tests: a project after a small demo
run, and the app serving its model in its own process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app.support import SMALL_DEMO, started_app, write_smears
from tests.projects import copy_project, run_session


@pytest.fixture(scope="package")
def demo_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project copy after `kedro run --env demo` (a small model at 32 px, registered as
    all_detection_synthetic in the copy's own store), and a folder of unseen smears beside it."""
    project = copy_project(tmp_path_factory.mktemp("app") / "project")
    here = Path.cwd()
    os.chdir(project)
    try:
        run_session(project, env="demo", pipeline="__default__", **SMALL_DEMO)
        write_smears(project / "smears")
        yield project
    finally:
        os.chdir(here)


@pytest.fixture(scope="package")
def page(demo_project: Path) -> Iterator[str]:
    with started_app(demo_project) as url:
        yield url
