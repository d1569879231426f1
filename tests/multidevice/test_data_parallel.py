"""`training.distribution: data_parallel` on 4 devices without a GPU: JAX given 4 host devices in a fresh
process (the flag only takes effect before JAX starts) fits the head (cached) and the whole network
(online) once on one device and once split over the 4, on the same batches from the same seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.multidevice.fit_on_devices import TRAINING
from tests.projects import PROJECT_ROOT

pytestmark = [pytest.mark.multidevice, pytest.mark.slow]

DEVICES = 4
#: Steps of each fit: 2 epochs of 32 cached maps (cached) or 16 images (online) in batches of 8.
STEPS = {"cached": 2 * 32 // 8, "online": 2 * 16 // 8}


@pytest.fixture(scope="module")
def fits() -> dict:
    environment = os.environ | {
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}",
        "JAX_PLATFORMS": "cpu",
    }
    finished = subprocess.run(
        [sys.executable, "-m", "tests.multidevice.fit_on_devices"],
        cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-4000:]
    return json.loads(finished.stdout.strip().splitlines()[-1])


def test_jax_sees_the_forced_devices(fits):
    assert len(fits["devices"]) == DEVICES


@pytest.mark.parametrize("mode", ["cached", "online"])
def test_the_batch_is_split_over_every_device_and_every_variable_replicated(fits, mode):
    fit = fits[mode]
    assert fit["single"]["distribution"] == "none" and fit["single"]["replicas"] == 1
    assert fit["parallel"]["distribution"] == "data_parallel" and fit["parallel"]["replicas"] == DEVICES
    assert fit["replicated_on_all_devices"] == fit["variables"] > 0


@pytest.mark.parametrize("mode", ["cached", "online"])
def test_a_data_parallel_fit_gives_the_single_device_weights(fits, mode):
    """The same batches give the same sums; only their order of addition differs (per device, then
    across devices), so the gradients agree to float32 rounding. Adam turns a gradient into a step of
    about the learning rate whatever its size, so where a gradient is itself at rounding level a weight
    can move by up to one learning rate per step either way: that bounds every weight's difference,
    while the bulk of the weights must agree to rounding, and the validation loss to 1e-3."""
    fit = fits[mode]
    assert fit["max_weight_difference"] <= 2 * TRAINING["learning_rate"] * STEPS[mode]
    assert fit["median_weight_difference"] <= 1e-5
    single, parallel = fit["val_loss"]["single"], fit["val_loss"]["parallel"]
    assert len(single) == len(parallel) == TRAINING["epochs"]
    assert max(abs(a - b) for a, b in zip(single, parallel, strict=True)) <= 1e-3
