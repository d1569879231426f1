"""The named choices of the recipe the core implements, each spelt once: what the code in `core/`
dispatches on, and what the parameter schema (`all_detection.parameters`) accepts. No Keras import here,
so the schema checks a run's parameters in a second, before TensorFlow loads."""

from __future__ import annotations

#: `model.input_scaling`: `imagenet` (BGR minus ImageNet's means, what VGG16's weights expect) or `unit`
#: (0-1, for a base trained from scratch).
INPUT_SCALINGS: tuple[str, ...] = ("imagenet", "unit")

#: `evaluation.tta`: `none`, or `dihedral`, the mean of the probabilities of each image's 8 dihedral views.
TTA_MODES: tuple[str, ...] = ("none", "dihedral")

#: `training.learning_rate_scaling`: the learning rates scaled by sqrt(batch size / 32) (`sqrt`) or as given.
LEARNING_RATE_SCALINGS: tuple[str, ...] = ("sqrt", "none")

#: `training.class_weight`: every image alike, or each class weighted by its inverse frequency.
CLASS_WEIGHTS: tuple[str, ...] = ("none", "balanced")

#: `training.mixed_precision`: float16 compute on a GPU (`auto`), always (`on`) or never (`off`).
MIXED_PRECISION: tuple[str, ...] = ("auto", "on", "off")

#: `training.feature_dtype`: how the cached base features are stored.
FEATURE_DTYPES: tuple[str, ...] = ("float16", "float32")

#: `training.batch_size` and `feature_batch_size` may be a number or this word: sized for the device.
AUTO_BATCH_SIZE = "auto"

#: `augmentation.transforms.fill_mode`: how the random rotation, shear and zoom fill the corners they
#: uncover (Keras' `RandomRotation` and `RandomZoom` modes).
FILL_MODES: tuple[str, ...] = ("reflect", "wrap", "constant", "nearest")

#: VGG16's convolution blocks and the convolutions in each; `training.fine_tune_blocks` unfreezes from
#: none up to all of the blocks, from the top.
VGG16_CONVOLUTIONS = (2, 2, 3, 3, 3)
VGG16_BLOCKS = len(VGG16_CONVOLUTIONS)

#: The names of VGG16's layers (Keras' `VGG16`), where `training.cache_at` may cut the base: each
#: convolution and each block's pooling.
VGG16_LAYERS: tuple[str, ...] = tuple(
    name
    for block, convolutions in enumerate(VGG16_CONVOLUTIONS, start=1)
    for name in (*(f"block{block}_conv{conv}" for conv in range(1, convolutions + 1)), f"block{block}_pool")
)

#: The base's output: the last block's pooling. Caching there freezes the whole of VGG16.
BASE_OUTPUT = VGG16_LAYERS[-1]
