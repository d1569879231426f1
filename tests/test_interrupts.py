"""A run stopped by Ctrl-C or SIGTERM is recorded as KILLED, with the node it stopped in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

# Interrupts real `kedro run` processes.
pytestmark = pytest.mark.slow

DEMO = ("demo.synthetic_dataset.per_class=6,demo.synthetic_dataset.image_size=64,"
        "preprocessing.image_size=32,training.epochs=50")  # fmt: skip


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_is_marked_killed_where_it_stopped(project_copy: Path, number: int):
    kedro = Path(sys.executable).with_name("kedro")
    run = subprocess.Popen(
        [str(kedro), "run", "--env", "demo", "--params", DEMO],
        cwd=project_copy,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "250"},
    )
    deadline, log = time.monotonic() + 300, []
    try:
        for line in run.stdout:
            log.append(line)
            if "fit_head_node" in line and "Running node" in line:
                break
            assert time.monotonic() < deadline, "".join(log[-20:])
        time.sleep(1)  # inside the node
        run.send_signal(number)
        run.wait(timeout=120)
    finally:
        run.kill()
    # Ended as the signal ends any process: the shell sees 128 + its number.
    assert run.returncode == -number, "".join(log[-30:])
    client = mlflow.MlflowClient(f"sqlite:///{project_copy / 'mlflow.db'}")
    (recorded,) = client.search_runs([client.get_experiment_by_name("all_detection").experiment_id])
    assert recorded.info.status == "KILLED"
    assert recorded.data.tags["ended_by"] == signal.Signals(number).name
    assert recorded.data.tags["stopped_in_node"] == "fit_head_node"
    # The interrupted node saved nothing, so nothing downstream of it looks complete.
    assert not (project_copy / "data" / "06_models" / "model.keras").exists()
