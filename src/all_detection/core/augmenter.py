"""The paper's random transforms as one stack of Keras preprocessing layers: the offline views and the
online model's on-the-fly augmentation come from this one definition."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

# Each transform draws from its own seed, fixed by its slot here rather than by which transforms are
# on, so switching colour jitter on leaves the geometric draws of every view as they were.
_TRANSFORM_SLOTS = ("rotation", "shear", "zoom", "flip", "brightness", "contrast")

# Images arrive and leave as uint8, so the colour layers clip to the same range the pixels live in.
PIXEL_RANGE = (0.0, 255.0)


def build_augmenter(transforms: dict[str, Any], seed: int) -> keras.Sequential:
    """The paper's random transforms as one stack of Keras preprocessing layers, in the order applied.

    Rotation (`rotation_degrees`, either way), shear (`shear`, on both axes), zoom (`zoom`, in or out,
    aspect kept), flips (`horizontal_flip`, `vertical_flip`), then, where their strength is above 0,
    brightness and contrast jitter for staining differences. A transform of strength 0 (or a flip set
    false) is left out, so with everything off the stack returns its input unchanged. Points mapped
    from outside the frame are filled by `fill_mode`. Batches of float images in 0-255 of any channel
    count go in and come out: each layer draws one set of parameters per image and applies it to all
    channels alike, so the two halves of a 6-channel (dual) image get the same geometry and the same
    brightness shift and contrast factor (contrast pulls each channel to its own mean). Only Keras 3
    layers are used, so the stack also serves the online-training model, on any backend; call it with
    `training=True`, since the layers pass images through untouched at inference.
    """
    seeds = dict(zip(_TRANSFORM_SLOTS, _independent_seeds(seed, len(_TRANSFORM_SLOTS)), strict=True))
    fill_mode = transforms["fill_mode"]
    flip_mode = {
        (True, True): "horizontal_and_vertical",
        (True, False): "horizontal",
        (False, True): "vertical",
    }.get((bool(transforms["horizontal_flip"]), bool(transforms["vertical_flip"])))
    layers: list[keras.layers.Layer] = []
    if transforms["rotation_degrees"]:
        # Keras measures rotation in fractions of a full turn.
        turn = transforms["rotation_degrees"] / 360
        layers.append(keras.layers.RandomRotation(turn, fill_mode=fill_mode, seed=seeds["rotation"]))
    if transforms["shear"]:
        layers.append(
            keras.layers.RandomShear(
                x_factor=transforms["shear"],
                y_factor=transforms["shear"],
                fill_mode=fill_mode,
                seed=seeds["shear"],
            )
        )
    if transforms["zoom"]:
        # Without a width factor the zoom keeps the aspect ratio, so round cells stay round.
        layers.append(keras.layers.RandomZoom(transforms["zoom"], fill_mode=fill_mode, seed=seeds["zoom"]))
    if flip_mode:
        layers.append(keras.layers.RandomFlip(flip_mode, seed=seeds["flip"]))
    if transforms["brightness"]:
        layers.append(
            keras.layers.RandomBrightness(
                transforms["brightness"], value_range=PIXEL_RANGE, seed=seeds["brightness"]
            )
        )
    if transforms["contrast"]:
        layers.append(
            keras.layers.RandomContrast(
                transforms["contrast"], value_range=PIXEL_RANGE, seed=seeds["contrast"]
            )
        )
    return keras.Sequential(layers or [keras.layers.Identity()], name="augmenter")


def _independent_seeds(seed: int, count: int) -> list[int]:
    # Neighbouring seeds (42, 43) must not share draws between layers, which seed + k would do.
    return [int(state) % 2**31 for state in np.random.SeedSequence(seed).generate_state(count)]
