"""The machine a run is on: its devices, precision and distribution, and batch sizes fitted to it."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from all_detection.core.choices import AUTO_BATCH_SIZE, LEARNING_RATE_SCALINGS, MIXED_PRECISION
from all_detection.layout import DISTRIBUTIONS

#: `training.feature_batch_size` and `training.batch_size` on a CPU when they are `auto`: 16 images at
#: 224 px keep VGG16's activations under 1 GB at 95% of batch 32's throughput on 2 cores.
CPU_BATCH_SIZES = {"feature_batch_size": 16, "batch_size": 32}
#: The batch size `training.learning_rate` and `fine_tune_learning_rate` are given for.
REFERENCE_BATCH_SIZE = 32
#: Device memory one image is planned to take in a batch at 224 px, an estimate rather than a
#: measurement: VGG16's forward activations in float16 are about 30 MB if all were kept at once (15
#: million values), less as compiled code frees them (feature pass); gradients and the optimiser's
#: state come on top in training. Only a quarter of the device's memory is planned for, so kernels'
#: scratch space and the framework's pools fit beside the batch. On an 80 GB card this gives 512 and
#: 256, the batch sizes the H200 baseline (shared/gpu) ran without trouble.
BYTES_PER_IMAGE = {"feature_batch_size": 24 * 2**20, "batch_size": 48 * 2**20}
GPU_BATCH_LIMITS = {"feature_batch_size": (16, 1024), "batch_size": (32, 256)}


def visible_gpus() -> list[str]:
    """Names of the GPUs the Keras backend can use; empty on a CPU-only machine."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415 - only the TensorFlow backend has it to ask

        return [device.name for device in tf.config.list_physical_devices("GPU")]
    if backend == "jax":
        import jax  # noqa: PLC0415

        return [str(device) for device in jax.devices() if device.platform == "gpu"]
    return []


def describe_device() -> str:
    gpus = visible_gpus()
    return f"GPU x{len(gpus)} ({', '.join(gpus)})" if gpus else f"CPU ({os.cpu_count()} cores)"


@contextlib.contextmanager
def hardware_setup(training: dict[str, Any], seed: int) -> Iterator[dict[str, Any]]:
    """Seed everything, choose precision and distribution, and restore the global policy afterwards.

    `training.mixed_precision: auto` turns float16 compute on only where a GPU is visible;
    `training.distribution: data_parallel` splits every batch evenly over all visible devices, the
    variables replicated on each (`keras.distribution.DataParallel` under JAX,
    `tf.distribute.MirroredStrategy` under TensorFlow); `auto` does so when two or more GPUs are
    visible; `multi_worker` spreads over several machines (TensorFlow backend). Yields what was chosen,
    with `replicas`, the number of devices a batch is split over. On the CPU, TensorFlow's ops are made
    deterministic, so two runs with the same `split.seed` give the same model.
    """
    gpus = visible_gpus()
    precision, distribution = training["mixed_precision"], training["distribution"]
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"training.distribution must be one of {DISTRIBUTIONS}, not {distribution!r}")
    if precision not in MIXED_PRECISION:
        raise ValueError(f"training.mixed_precision must be one of {MIXED_PRECISION}, not {precision!r}")
    mixed = precision == "on" or (precision == "auto" and bool(gpus))
    parallel = distribution == "data_parallel" or (distribution == "auto" and len(gpus) > 1)
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow" and not gpus:
        import tensorflow as tf  # noqa: PLC0415

        tf.config.experimental.enable_op_determinism()
    previous_policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    scope, replicas = contextlib.nullcontext(), 1
    backend = keras.backend.backend()
    if backend == "jax" and distribution == "multi_worker":
        raise ValueError(
            "training.distribution: multi_worker needs the TensorFlow backend; under JAX, data_parallel "
            "(keras.distribution.DataParallel) covers the devices of one machine"
        )
    if backend == "jax" and parallel:
        # Data parallelism over every visible device: each batch is split across them.
        data_parallel = keras.distribution.DataParallel()
        scope, replicas = _keras_distribution(data_parallel), data_parallel.device_mesh.devices.size
    if backend == "tensorflow" and (parallel or distribution == "multi_worker"):
        import tensorflow as tf  # noqa: PLC0415

        # Every worker of a multi-worker run executes the same command, told its role by TF_CONFIG.
        strategy = (
            tf.distribute.MultiWorkerMirroredStrategy()
            if distribution == "multi_worker"
            else tf.distribute.MirroredStrategy()
        )
        scope, replicas = strategy.scope(), strategy.num_replicas_in_sync
    used = "multi_worker" if distribution == "multi_worker" else "data_parallel" if parallel else "none"
    try:
        with scope:
            yield {
                "device": describe_device(),
                "mixed_precision": mixed,
                "distribution": used,
                "replicas": replicas,
            }
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def batch_split() -> int:
    """How many devices each batch is split over under the Keras distribution in effect (JAX's
    `DataParallel`, set by `hardware_setup`): every batch must hold a multiple of it. 1 otherwise;
    TensorFlow's strategies split uneven batches themselves."""
    distribution = keras.distribution.distribution()
    return int(distribution.device_mesh.devices.size) if distribution is not None else 1


def padded_predict(model: keras.Model, batch: np.ndarray) -> np.ndarray:
    """`model.predict_on_batch(batch)`, the batch padded with copies of its last row to a multiple of
    `batch_split()` and the padding's outputs dropped: a data-parallel device mesh takes only batches
    it can split evenly, and a stack's last batch is usually short."""
    split = batch_split()
    padding = -len(batch) % split
    if not padding:
        return model.predict_on_batch(batch)
    padded = np.concatenate([batch, np.repeat(batch[-1:], padding, axis=0)])
    return model.predict_on_batch(padded)[: len(batch)]


@contextlib.contextmanager
def _keras_distribution(distribution: Any) -> Iterator[None]:
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(distribution)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)


def device_memory_bytes() -> int | None:
    """The first GPU's memory in bytes, or None where there is no GPU or it cannot be asked."""
    if not visible_gpus():
        return None
    if keras.backend.backend() == "jax":
        import jax  # noqa: PLC0415

        stats = jax.devices("gpu")[0].memory_stats() or {}
        if stats.get("bytes_limit"):
            return int(stats["bytes_limit"])
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
        try:
            mebibytes = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout
            return int(mebibytes.split()[0]) * 2**20
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None
    return None


def auto_batch_size(kind: str, image_size: int) -> int:
    """The batch size `auto` stands for: the CPU's (`CPU_BATCH_SIZES`), or on a GPU the largest power of
    two whose images fit a quarter of its memory (`BYTES_PER_IMAGE`, scaled by the pixel count) within
    `GPU_BATCH_LIMITS`. A GPU whose memory cannot be read is taken to have 16 GB."""
    if not visible_gpus():
        return CPU_BATCH_SIZES[kind]
    memory = device_memory_bytes() or 16 * 2**30
    per_image = BYTES_PER_IMAGE[kind] * (image_size / 224) ** 2
    low, high = GPU_BATCH_LIMITS[kind]
    fitting = max(1, int(memory / 4 // per_image))
    return int(min(high, max(low, 2 ** int(math.log2(fitting)))))


def sized_for_device(training: dict[str, Any], image_size: int) -> dict[str, Any]:
    """`training` with `auto` batch sizes replaced by numbers for this machine, and the learning rates
    scaled to the batch size (`learning_rate_scaling`).

    `feature_batch_size: auto` is `auto_batch_size`'s. `batch_size: auto` is too in `online` mode, where
    every step runs VGG16; in `cached` mode it is 32 on any device: the head's steps are cheap, and on
    the real dev half batches of 128 and 256 (with the square-root rule) scored 0.3 points lower in
    cross-validation and 2 points lower in Benign recall than 32.

    The learning rates are given for `REFERENCE_BATCH_SIZE` (32). `sqrt` multiplies them by
    sqrt(batch_size / 32), the square-root rule for Adam (a batch k times larger has sqrt(k) times less
    gradient noise, so its steps can be sqrt(k) times longer); `none` keeps them. At batch 32 both
    leave them as they are.
    """
    sized = dict(training)
    for kind in ("feature_batch_size", "batch_size"):
        value = training[kind]
        if value == AUTO_BATCH_SIZE:
            cached_head = kind == "batch_size" and training.get("mode", "cached") == "cached"
            sized[kind] = REFERENCE_BATCH_SIZE if cached_head else auto_batch_size(kind, image_size)
        elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"training.{kind} must be a positive whole number or 'auto', not {value!r}")
    scaling = training.get("learning_rate_scaling", "none")
    if scaling not in LEARNING_RATE_SCALINGS:
        raise ValueError(
            f"training.learning_rate_scaling must be one of {LEARNING_RATE_SCALINGS}, not {scaling!r}"
        )
    factor = math.sqrt(sized["batch_size"] / REFERENCE_BATCH_SIZE) if scaling == "sqrt" else 1.0
    for rate in ("learning_rate", "fine_tune_learning_rate"):
        sized[rate] = training[rate] * factor
    return sized
