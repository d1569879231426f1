"""How the package is laid out: each stage's nodes stand alone, and shared rules live outside pipelines/."""

from __future__ import annotations

import ast
from pathlib import Path

import all_detection.pipelines

PIPELINES = Path(all_detection.pipelines.__file__).parent
STUDIES = PIPELINES.parent / "studies"
# What the studies share besides their wiring (`studies/wiring.py`), and each study's own nodes.
STUDY_NODES = [STUDIES / "nodes.py", STUDIES / "figures.py", *sorted(STUDIES.glob("*/nodes.py"))]


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for statement in ast.walk(ast.parse(path.read_text())):
        if isinstance(statement, ast.ImportFrom) and statement.module:
            modules.add(statement.module)
            modules.update(f"{statement.module}.{alias.name}" for alias in statement.names)
        elif isinstance(statement, ast.Import):
            modules.update(alias.name for alias in statement.names)
    return modules


def test_no_pipeline_s_nodes_import_another_pipeline():
    """Node modules share code through all_detection's own modules (image_io, segmentation, core...),
    never through another stage's nodes; only the wiring of a study composes other pipelines."""
    offenders = {}
    for nodes in sorted(PIPELINES.glob("*/*.py")):
        if nodes.name == "pipeline.py":
            continue
        own = f"all_detection.pipelines.{nodes.parent.name}"
        foreign = {
            module
            for module in imported_modules(nodes)
            if module.startswith("all_detection.pipelines") and not module.startswith(own)
        }
        if foreign:
            offenders[str(nodes.relative_to(PIPELINES))] = sorted(foreign)
    assert not offenders


def test_the_studies_nodes_import_no_stage_s_nodes():
    """A study composes the stages' pipelines in its wiring (`pipeline.py`, `studies/wiring.py`); its
    nodes stand alone."""
    for nodes in STUDY_NODES:
        imported = imported_modules(nodes)
        assert not any(name.startswith("all_detection.pipelines") for name in imported), nodes


def test_the_studies_nodes_import_no_kedro():
    """The studies' nodes and their figure are plain functions, callable from a notebook or a test as is."""
    for nodes in STUDY_NODES:
        imported = imported_modules(nodes)
        assert not any(name == "kedro" or name.startswith("kedro.") for name in imported), nodes


def test_the_hooks_and_the_core_import_no_pipeline():
    package = PIPELINES.parent
    for module in [package / "hooks.py", package / "settings.py", *sorted((package / "core").glob("*.py"))]:
        imported = imported_modules(module)
        assert not any(name.startswith("all_detection.pipelines") for name in imported), module


def test_the_registry_lists_every_stage_and_study_folder():
    from all_detection.pipeline_registry import DEMO, ON_DEMAND, STAGES  # noqa: PLC0415

    folders = {path.parent.name for path in PIPELINES.glob("*/pipeline.py")}
    folders |= {path.parent.name for path in STUDIES.glob("*/pipeline.py")}
    assert set(STAGES) | set(ON_DEMAND) | set(DEMO) == folders
