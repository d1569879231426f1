"""The backend-neutral core: what it imports, how it sizes batches, and how batches reach the model."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from all_detection.core import hardware
from all_detection.core.arrays import prefetched_batches
from all_detection.core.hardware import CPU_BATCH_SIZES, REFERENCE_BATCH_SIZE, sized_for_device
from all_detection.core.model import assemble_classifier, build_base, build_feature_extractor, build_head
from all_detection.core.prediction import predict_probabilities
from all_detection.core.training import ArrayBatches, extract_features
from tests.configuration import configured_parameters
from tests.projects import PROJECT_ROOT

CORE_MODULES = ["arrays", "augmenter", "hardware", "model", "prediction", "progress", "stain", "training"]
TRAINING = {"feature_batch_size": "auto", "batch_size": "auto", "learning_rate": 1e-3,
            "fine_tune_learning_rate": 1e-5, "learning_rate_scaling": "sqrt"}  # fmt: skip
HEAD = {"conv_filters": [8], "dense_units": [8], "dropout": [0.1], "batch_norm_momentum": 0.9}


def _import_core_without(backend: str, forbidden: list[str]) -> subprocess.CompletedProcess:
    """Import every core module in a fresh interpreter where importing any of `forbidden` fails."""
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        FORBIDDEN = {forbidden!r}
        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in FORBIDDEN:
                    raise ImportError(f"the core imported {{name}}")
        sys.meta_path.insert(0, Refuse())
        for module in {CORE_MODULES!r}:
            importlib.import_module(f"all_detection.core.{{module}}")
        print("ok")
    """)
    environment = {**os.environ, "KERAS_BACKEND": backend}
    command = [sys.executable, "-c", script]
    return subprocess.run(command, capture_output=True, text=True, env=environment, check=False)


@pytest.mark.slow  # a fresh interpreter per backend
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_the_core_imports_only_keras_numpy_and_pandas(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (the `{backend}` extra)")
    # (scipy is not refused: JAX itself needs it.)
    forbidden = ["kedro", "kedro_datasets", "kedro_mlflow", "mlflow", "sklearn", "matplotlib", "cv2", "PIL"]
    # Under JAX nothing may reach for TensorFlow either: the GPU machines have none.
    forbidden += ["tensorflow"] if backend == "jax" else ["jax"]
    result = _import_core_without(backend, forbidden)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_a_refused_import_is_caught():
    # The check above can fail: a core that imported scikit-learn would be refused.
    result = _import_core_without(keras.backend.backend(), ["numpy"])
    assert result.returncode != 0 and "the core imported numpy" in result.stderr


def test_auto_batch_sizes_on_a_cpu_are_the_cpu_s_and_keep_the_learning_rates():
    sized = sized_for_device(TRAINING, 224)
    assert {kind: sized[kind] for kind in CPU_BATCH_SIZES} == CPU_BATCH_SIZES
    assert sized["batch_size"] == REFERENCE_BATCH_SIZE
    assert sized["learning_rate"] == pytest.approx(1e-3)
    assert TRAINING["batch_size"] == "auto"  # the parameters themselves are left alone


def test_learning_rates_follow_the_square_root_rule_and_none_keeps_them():
    sized = sized_for_device({**TRAINING, "batch_size": 128}, 224)
    assert sized["learning_rate"] == pytest.approx(2e-3) and sized[
        "fine_tune_learning_rate"
    ] == pytest.approx(2e-5)
    kept = sized_for_device({**TRAINING, "batch_size": 128, "learning_rate_scaling": "none"}, 224)
    assert kept["learning_rate"] == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"batch_size": 0}, "training.batch_size"), ({"batch_size": 2.5}, "training.batch_size"),
     ({"feature_batch_size": "big"}, "training.feature_batch_size"),
     ({"learning_rate_scaling": "linear"}, "learning_rate_scaling")],
)  # fmt: skip
def test_bad_batch_settings_are_refused_by_name(change, message):
    with pytest.raises(ValueError, match=message):
        sized_for_device({**TRAINING, **change}, 224)


@pytest.fixture(scope="module")
def networks() -> tuple[keras.Model, keras.Model]:
    keras.utils.set_random_seed(3)
    base, _ = build_base(32, None)
    extractor = build_feature_extractor(base, 3, "imagenet")
    head = build_head(extractor.output_shape[1:], HEAD)
    return extractor, assemble_classifier(extractor, head)


def test_uint8_batches_give_the_float32_forward_pass(networks):
    extractor, classifier = networks
    images = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    expected = keras.ops.convert_to_numpy(extractor(images.astype(np.float32), training=False))
    features = extract_features(extractor, images, batch_size=4, dtype="float32")
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)
    expected = keras.ops.convert_to_numpy(classifier(images.astype(np.float32), training=False))
    probabilities = predict_probabilities(classifier, images, batch_size=3)
    assert probabilities.dtype == np.float64 and probabilities.shape == (10, 4)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)


def test_training_batches_travel_in_the_dtype_they_are_stored_in():
    images = np.zeros((5, 8, 8, 3), dtype=np.uint8)
    maps = np.zeros((5, 2, 2, 4), dtype=np.float16)
    labels = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]]
    assert ArrayBatches(images, labels, 2, shuffle=True, seed=0)[0][0].dtype == np.uint8
    assert ArrayBatches(maps, labels, 2, shuffle=False, seed=0)[0][0].dtype == np.float16


def test_the_gpu_benchmark_measures_the_shipped_parameters():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", PROJECT_ROOT / "benchmarks" / "gpu.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    training = configured_parameters()
    augmentation = training["augmentation"]
    for key, value in benchmark.SHIPPED_TRAINING.items():
        assert training["training"][key] == value, key
    assert training["model"]["head"] == benchmark.SHIPPED_HEAD
    assert augmentation["transforms"] == benchmark.SHIPPED_TRANSFORMS
    assert training["preprocessing"]["stain_normalisation"] == benchmark.SHIPPED_STAIN_NORMALISATION


@pytest.mark.parametrize(("rows", "batch_size"), [(10, 4), (8, 4), (3, 5), (0, 4)])
def test_prefetched_batches_cover_every_row_once_in_order(tmp_path, rows, batch_size):
    stored = np.lib.format.open_memmap(tmp_path / "stack.npy", "w+", np.uint8, (rows, 2, 2, 3))
    stored[:] = np.arange(rows, dtype=np.uint8)[:, None, None, None]
    batches = list(prefetched_batches(stored, batch_size))
    assert [start for start, _ in batches] == list(range(0, rows, batch_size))
    assert all(batch.dtype == np.uint8 and not isinstance(batch, np.memmap) for _, batch in batches)
    joined = np.concatenate([batch for _, batch in batches]) if batches else stored[:0]
    np.testing.assert_array_equal(joined, stored)


def test_auto_batch_sizes_on_a_large_gpu(monkeypatch):
    monkeypatch.setattr(hardware, "visible_gpus", lambda: ["/physical_device:GPU:0"])
    monkeypatch.setattr(hardware, "device_memory_bytes", lambda: 80 * 2**30)
    online = sized_for_device({**TRAINING, "mode": "online"}, 224)
    assert (online["feature_batch_size"], online["batch_size"]) == (512, 256)
    assert online["learning_rate"] == pytest.approx(1e-3 * 8**0.5)
    # The cached head trains at 32 on any device; a GPU with less memory gets smaller batches.
    assert sized_for_device({**TRAINING, "mode": "cached"}, 224)["batch_size"] == 32
    monkeypatch.setattr(hardware, "device_memory_bytes", lambda: 16 * 2**30)
    assert sized_for_device({**TRAINING, "mode": "online"}, 224)["feature_batch_size"] == 128
    assert sized_for_device({**TRAINING, "mode": "online"}, 448)["feature_batch_size"] == 32
