"""The backend-neutral core alone, at the shipped defaults, against what the same model does compiled.

Runs wherever Keras 3 runs with JAX or TensorFlow, numpy and pandas: no Kedro, MLflow or scikit-learn
(from the project root, `PYTHONPATH=src` if the project is not installed). VGG16 has random weights
(the costs are the same) and the images are seeded random pixels of the real dataset's shape, so
nothing is downloaded. One JSON object is printed as the last line:

- `feature_pass`: the project's `extract_features` at the shipped `feature_batch_size` (`auto`) and
  precision (`auto`), in images/s and TFLOP/s; `ceiling`: the same extractor compiled (`jax.jit`, or
  `tf.function(jit_compile=True)`) on uint8 batches already on the device, the best this model can do
  here, and `percent_of_ceiling`; `previous_feed`: the way batches were fed before (float32 made on
  the host, an uncompiled call per batch), measured on the same images, so a change that made the CPU
  slower shows here.
- `online`: `fit_online` over the training images, first epoch (compile included) and a steady one,
  and the 25-epoch projection.
- `fine_tuning`: one steady epoch of the last two VGG16 blocks and the head on cached maps
  (`training.cache_at: block3_pool`), `fit_cached`'s fine-tuning phase.

    python benchmarks/gpu.py            # 224 px; 2280 training images on a GPU, 128 on a CPU
    python benchmarks/gpu.py --quick    # 64 px, a few images: a one-minute smoke run (CI runs it)
    PYTHONPATH=src KERAS_BACKEND=jax python benchmarks/gpu.py    # where the project is not installed
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any

import keras
import numpy as np
import pandas as pd

from all_detection.core.hardware import (
    describe_device,
    hardware_setup,
    sized_for_device,
    visible_gpus,
)
from all_detection.core.model import (
    base_gflop_per_image,
    build_base,
    build_base_above,
    build_feature_extractor,
    build_head,
    one_hot,
)
from all_detection.core.stain import stain_reference
from all_detection.core.training import extract_features, fit_cached, fit_online

#: The shipped training parameters this benchmark needs (conf/base/parameters_training.yml and
#: parameters_augmentation.yml; a test checks they agree), so it runs without PyYAML or Kedro.
SHIPPED_TRAINING = {
    "mode": "cached", "epochs": 25, "batch_size": "auto", "feature_batch_size": "auto",
    "learning_rate": 0.001, "learning_rate_scaling": "sqrt", "fine_tune_learning_rate": 1.0e-5,
    "early_stopping_patience": 6, "reduce_lr": {"factor": 0.3, "patience": 3, "min_lr": 1.0e-6},
    "class_weight": "balanced", "mixed_precision": "auto", "distribution": "auto", "workers": 2,
    "feature_dtype": "float16",
}  # fmt: skip
SHIPPED_HEAD = {"conv_filters": [256, 128, 64], "dense_units": [512, 512], "dropout": [0.1, 0.2],
                "batch_norm_momentum": 0.9}  # fmt: skip
SHIPPED_TRANSFORMS = {"rotation_degrees": 180, "shear": 0.2, "zoom": 0.2, "horizontal_flip": True,
                      "vertical_flip": True, "fill_mode": "reflect", "brightness": 0.0,
                      "contrast": 0.0, "stain": 0.0}  # fmt: skip
#: conf/base/parameters_preprocessing.yml: whether the model gives every image the training stain.
SHIPPED_STAIN_NORMALISATION = "reinhard"
EPOCHS = SHIPPED_TRAINING["epochs"]
SEED = 42


def images_of_the_real_shape(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded uint8 pixels (n, size, size, 3) and labels spread over the four classes."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8), rng.integers(0, 4, count)


def timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def feature_pass(extractor: keras.Model, images: np.ndarray, batch_size: int) -> float:
    """Seconds of the project's feature pass over `images`, after one warm-up batch (compiles)."""
    extract_features(extractor, images[:batch_size], batch_size, "float16")
    return timed(extract_features, extractor, images, batch_size, "float16")


def previous_feed(extractor: keras.Model, images: np.ndarray, batch_size: int) -> float:
    """Seconds of the earlier feeding: float32 batches made on the host, an uncompiled call each."""

    def run(stack: np.ndarray) -> None:
        for start in range(0, len(stack), batch_size):
            batch = np.asarray(stack[start : start + batch_size], dtype=np.float32)
            keras.ops.convert_to_numpy(extractor(batch, training=False))

    run(images[:batch_size])
    return timed(run, images)


def jitted_ceiling(extractor: keras.Model, images: np.ndarray, batch_size: int) -> float:
    """Seconds for the extractor compiled by the backend over uint8 batches already on the device."""
    batches = [
        images[start : start + batch_size] for start in range(0, len(images) - batch_size + 1, batch_size)
    ]
    if keras.backend.backend() == "jax":
        import jax  # noqa: PLC0415 - the ceiling is measured in the backend's own terms

        trainable = [variable.value for variable in extractor.trainable_variables]
        frozen = [variable.value for variable in extractor.non_trainable_variables]
        step = jax.jit(lambda pixels: extractor.stateless_call(trainable, frozen, pixels)[0])
        on_device = [jax.device_put(batch) for batch in batches]
        step(on_device[0]).block_until_ready()
        started = time.perf_counter()
        outputs = [step(batch) for batch in on_device]
        jax.block_until_ready(outputs)
        return (time.perf_counter() - started) * len(images) / (len(batches) * batch_size)
    import tensorflow as tf  # noqa: PLC0415

    step = tf.function(lambda pixels: extractor(pixels, training=False), jit_compile=True)
    on_device = [tf.constant(batch) for batch in batches]
    step(on_device[0]).numpy()
    started = time.perf_counter()
    outputs = [step(batch) for batch in on_device]
    _ = [output.numpy() for output in outputs[-1:]]
    return (time.perf_counter() - started) * len(images) / (len(batches) * batch_size)


def epoch_seconds(history: pd.DataFrame, phase: str) -> list[float]:
    return [round(float(seconds), 3) for seconds in history.loc[history["phase"] == phase, "epoch_seconds"]]


def measure(size: int, feature_images: int, train_images: int, val_images: int) -> dict[str, Any]:
    training = {**SHIPPED_TRAINING, "early_stopping_patience": 99}
    result: dict[str, Any] = {
        "device": describe_device(),
        "gpus": visible_gpus(),
        "keras_backend": keras.backend.backend(),
        "keras": keras.__version__,
        "python": platform.python_version(),
        "image_size": size,
    }
    gflop = base_gflop_per_image(size)
    with hardware_setup(training, SEED) as hardware:
        sized = sized_for_device(training, size)
        result |= {"mixed_precision": hardware["mixed_precision"], "feature_batch_size":
                   sized["feature_batch_size"], "batch_size": sized["batch_size"]}  # fmt: skip
        base, _ = build_base(size, None)
        images, _ = images_of_the_real_shape(feature_images, size, seed=1)
        stain = stain_reference(images) if SHIPPED_STAIN_NORMALISATION == "reinhard" else None
        extractor = build_feature_extractor(base, 3, "imagenet", stain_reference=stain)
        batch = sized["feature_batch_size"]
        shipped = feature_pass(extractor, images, batch)
        previous = previous_feed(extractor, images, batch)
        ceiling_batch = max(batch, 256) if visible_gpus() else batch
        ceiling = jitted_ceiling(extractor, images, min(ceiling_batch, len(images)))
        result["feature_pass"] = {
            "images": len(images),
            "img_per_s": round(len(images) / shipped, 1),
            "tflop_per_s": round(len(images) * gflop / shipped / 1000, 2),
        }
        result["ceiling"] = {
            "batch_size": min(ceiling_batch, len(images)),
            "img_per_s": round(len(images) / ceiling, 1),
            "tflop_per_s": round(len(images) * gflop / ceiling / 1000, 2),
        }
        result["percent_of_ceiling"] = round(100 * ceiling / shipped, 1)
        result["previous_feed"] = {
            "img_per_s": round(len(images) / previous, 1),
            "shipped_over_previous": round(previous / shipped, 2),
        }

        train, labels = images_of_the_real_shape(train_images, size, seed=2)
        val, val_labels = images_of_the_real_shape(val_images, size, seed=3)
        index = pd.DataFrame({"label_index": labels})
        head = build_head(extractor.output_shape[1:], SHIPPED_HEAD)
        online_sized = sized_for_device({**training, "mode": "online"}, size)
        result["online_batch_size"] = online_sized["batch_size"]
        online = fit_online(extractor, base, head, train, index, val, one_hot(val_labels),
                            {"transforms": SHIPPED_TRANSFORMS}, {**online_sized, "epochs": 2,
                            "fine_tune_blocks": 0}, SEED)  # fmt: skip
        first, steady = epoch_seconds(online, "head")
        result["online"] = {
            "images": len(train),
            "first_epoch_s": first,
            "steady_epoch_s": steady,
            "img_per_s": round(len(train) / steady, 1),
            f"projected_{EPOCHS}_epochs_s": round(first + (EPOCHS - 1) * steady, 1),
        }

        cut = "block3_pool"  # the last two blocks, block4 and block5, above the cut
        tuned_base, _ = build_base(size, None)
        below = build_feature_extractor(tuned_base, 3, "imagenet", cut, stain)
        maps = extract_features(below, train, sized["feature_batch_size"], "float16")
        val_maps = extract_features(below, val, sized["feature_batch_size"], "float16")
        above = build_base_above(tuned_base, cut, below.output_shape[1:], 1)
        tuned_head = build_head(above.output_shape[1:], SHIPPED_HEAD)
        history = fit_cached(tuned_head, above, maps, val_maps, pd.Series(labels), one_hot(val_labels),
                             {**sized, "epochs": 1, "fine_tune_epochs": 2}, SEED)  # fmt: skip
        tuned = epoch_seconds(history, "fine_tune")
        result["fine_tuning"] = {
            "cache_at": cut,
            "images": len(train),
            "first_epoch_s": tuned[0],
            "steady_epoch_s": tuned[-1],
            "img_per_s": round(len(train) / tuned[-1], 1),
        }
    return result


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 px and a few images: a smoke run")
    parser.add_argument("--size", type=int, help="image side in pixels (224, or 64 with --quick)")
    parser.add_argument("--images", type=int, help="training images (2280 on a GPU, 128 on a CPU)")
    args = parser.parse_args(argv)
    gpu = bool(visible_gpus())
    size = args.size or (64 if args.quick else 224)
    train = args.images or (24 if args.quick else 2280 if gpu else 128)
    feature_images = 48 if args.quick else 4096 if gpu else 128
    result = measure(size, feature_images, train, max(8, train // 7))
    result["mode"] = "quick" if args.quick else "full"
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
