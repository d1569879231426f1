"""Class probabilities of a stack of images, a batch at a time, on any Keras backend."""

from __future__ import annotations

import logging

import keras
import numpy as np

from all_detection.core.arrays import prefetched_batches
from all_detection.core.progress import Progress

logger = logging.getLogger(__name__)


def predict_probabilities(model: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """The model's output for every image of a (memory-mapped) stack, in row order, as float64.

    Each batch goes to the device as stored (uint8 pixels, 0-255) through the model's compiled predict
    step (`predict_on_batch`), which casts it there, while the next batch is read; only two batches
    are in memory at a time, so memory stays bounded however long the stack. A test-time-augmented
    model runs 8 views of each image, so `batch_size` images are 8 times as many forward passes.
    """
    outputs = np.empty((len(images), model.output_shape[-1]), dtype=np.float64)
    progress = Progress(logger, "predictions", len(images))
    for start, batch in prefetched_batches(images, batch_size):
        outputs[start : start + len(batch)] = model.predict_on_batch(batch)
        progress.advance(len(batch))
    return outputs
