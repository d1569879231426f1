"""Grad-CAM (Selvaraju et al. 2017): where in an image the trained network found the evidence for a class,
for the evaluation's figure and the shortcut audit's measure of where the model looks."""

from __future__ import annotations

import keras
import numpy as np

from all_detection.core.model import gradcam_layers


def gradcam_heatmaps(
    model: keras.Model, images: np.ndarray, class_indices: np.ndarray, batch_size: int = 16
) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) of each image for its class in `class_indices`, on VGG16's last
    convolution (`core.model.gradcam_layers`): the feature maps weighted by the spatially averaged
    gradient of the class's score before softmax, rectified and scaled to [0, 1]. Returns (n, h, w) at
    the feature maps' size.

    `batch_size` images at a time: VGG16's first blocks hold about 50 MB of activations per image at
    224 px, so 80 images at once would add about 4 GB to the process. A dual (6-channel) model's
    heatmap is that of its original half. Needs the TensorFlow backend.
    """
    starts = range(0, len(images), batch_size)
    return np.concatenate(
        [_heatmaps(model, images[s : s + batch_size], class_indices[s : s + batch_size]) for s in starts]
    )


def _heatmaps(model: keras.Model, images: np.ndarray, class_indices: np.ndarray) -> np.ndarray:
    import tensorflow as tf  # noqa: PLC0415 - Keras 3 has no backend-neutral gradient; only this needs it

    layers = gradcam_layers(model)
    stage = layers["stage"]
    to_stage = keras.Model(layers["head"].inputs, stage.input)
    batch = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
    # A stain-normalising model normalises the whole image (both halves of a dual one) before scaling.
    for layer in layers["stain_normalisation"]:
        batch = layer(batch)
    halves = [batch[..., 3 * half : 3 * half + 3] for half in range(batch.shape[-1] // 3)]
    maps = [_through(layers["to_last_conv"], layers["input_scaling"](half)) for half in halves]
    with tf.GradientTape() as tape:
        tape.watch(maps[0])
        features = [_through(layers["above_last_conv"], feature_map) for feature_map in maps]
        joined = features[0] if len(features) == 1 else tf.concat(features, axis=-1)
        # The class score before softmax, as in the paper: a confident softmax has vanishing gradients.
        logits = tf.matmul(tf.cast(to_stage(joined, training=False), stage.kernel.dtype), stage.kernel)
        scores = tf.gather(logits + stage.bias, tf.constant(class_indices, tf.int32), batch_dims=1)
    gradients = tf.cast(tape.gradient(scores, maps[0]), tf.float32)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    heatmaps = tf.nn.relu(tf.reduce_sum(weights * tf.cast(maps[0], tf.float32), axis=-1)).numpy()
    peaks = heatmaps.max(axis=(1, 2), keepdims=True)
    return np.divide(heatmaps, peaks, out=np.zeros_like(heatmaps), where=peaks > 0)


def _through(layers: list[keras.layers.Layer], x):
    for layer in layers:
        x = layer(x)
    return x
