"""Run by `test_data_parallel.py` in a fresh process whose JAX was given 4 host (CPU) devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`, which only takes effect before JAX starts):
the head's cached fit and the online fit, each once on one device (`training.distribution: none`) and
once split over all 4 (`data_parallel`), on the same batches from the same seed. Prints one JSON line:
per fit, the largest weight difference, the number of weights, how many are replicated on all 4
devices, and what `hardware_setup` reported."""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd

from all_detection.core.hardware import hardware_setup
from all_detection.core.model import build_base, build_feature_extractor, build_head
from all_detection.core.training import fit_cached, fit_online

SEED = 7
HEAD = {"conv_filters": [16, 8, 8], "dense_units": [16, 16], "dropout": [0.1, 0.2],
        "batch_norm_momentum": 0.9}  # fmt: skip
TRAINING = {
    "epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "fine_tune_learning_rate": 1e-5,
    "fine_tune_epochs": 0, "fine_tune_blocks": 0, "early_stopping_patience": 10,
    "reduce_lr": {"factor": 0.5, "patience": 10, "min_lr": 1e-6}, "class_weight": "balanced",
    "mixed_precision": "off", "workers": 1, "feature_batch_size": 8,
}  # fmt: skip
#: Every transform off but the exact flips: the comparison is of the distribution, not of interpolation.
TRANSFORMS = {
    "rotation_degrees": 0, "shear": 0.0, "zoom": 0.0, "horizontal_flip": True, "vertical_flip": True,
    "fill_mode": "reflect", "brightness": 0.0, "contrast": 0.0, "stain": 0.0,
}  # fmt: skip


def replicated_on_all(variables: list) -> int:
    """How many of `variables` hold a full copy on every device."""
    devices = len(keras.distribution.list_devices())
    shardings = [variable.value.sharding for variable in variables]
    return sum(len(sharding.device_set) == devices and sharding.is_fully_replicated for sharding in shardings)


def cached_fit(distribution: str, maps: np.ndarray, labels: np.ndarray) -> dict:
    training = TRAINING | {"distribution": distribution}
    with hardware_setup(training, SEED) as hardware:
        head = build_head(maps.shape[1:], HEAD)
        history = fit_cached(head, None, maps[:32], maps[32:], pd.Series(labels[:32]),
                             np.eye(4)[labels[32:]], training, SEED)  # fmt: skip
        return {"hardware": hardware, "weights": head.get_weights(),
                "replicated": replicated_on_all(head.weights), "variables": len(head.weights),
                "val_loss": history["val_loss"].tolist()}  # fmt: skip


def online_fit(distribution: str, images: np.ndarray, labels: np.ndarray) -> dict:
    training = TRAINING | {"distribution": distribution}
    with hardware_setup(training, SEED) as hardware:
        base, _ = build_base(images.shape[1], None)
        extractor = build_feature_extractor(base, 3, "imagenet")
        head = build_head(extractor.output_shape[1:], HEAD)
        index = pd.DataFrame({"label_index": labels[:16]})
        history = fit_online(extractor, base, head, images[:16], index, images[16:], np.eye(4)[labels[16:]],
                             {"transforms": TRANSFORMS}, training, SEED)  # fmt: skip
        variables = head.weights + base.weights
        return {"hardware": hardware, "weights": [np.asarray(v) for v in variables],
                "replicated": replicated_on_all(variables), "variables": len(variables),
                "val_loss": history["val_loss"].tolist()}  # fmt: skip


def compared(single: dict, parallel: dict) -> dict:
    pairs = zip(single["weights"], parallel["weights"], strict=True)
    differences = np.concatenate([np.abs(a - b).ravel() for a, b in pairs])
    return {
        "max_weight_difference": float(differences.max()),
        "median_weight_difference": float(np.median(differences)),
        "p99_weight_difference": float(np.quantile(differences, 0.99)),
        "largest_weight": max(float(np.max(np.abs(a))) for a in single["weights"]),
        "variables": parallel["variables"],
        "replicated_on_all_devices": parallel["replicated"],
        "single": single["hardware"],
        "parallel": parallel["hardware"],
        "val_loss": {"single": single["val_loss"], "parallel": parallel["val_loss"]},
    }


def main() -> None:
    # Set by the caller, never here: this module is also imported by the test, whose later subprocesses
    # (the page, mlflow models serve) would inherit a backend set in its environment.
    if keras.backend.backend() != "jax":
        raise SystemExit("run with KERAS_BACKEND=jax and XLA_FLAGS=--xla_force_host_platform_device_count=4")
    rng = np.random.default_rng(SEED)
    labels = np.arange(48) % 4
    # Maps and images whose means follow the class, so the validation loss falls every epoch and both
    # fits keep their last epoch's weights (the best epoch is restored: a tie broken differently
    # would compare different epochs).
    maps = (rng.random((48, 2, 2, 32)) + 3 * labels[:, None, None, None]).astype(np.float16)
    images = (rng.integers(0, 128, (24, 32, 32, 3)) + 40 * labels[:24, None, None, None]).astype(np.uint8)
    result = {
        "devices": [str(device) for device in keras.distribution.list_devices()],
        "cached": compared(cached_fit("none", maps, labels), cached_fit("data_parallel", maps, labels)),
        "online": compared(online_fit("none", images, labels), online_fit("data_parallel", images, labels)),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
