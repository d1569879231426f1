"""The training views: which each training image gets (`plan_views`: its exact symmetries and random
views) and their pixels (`render_views`), and the paper's random transforms as one stack of Keras
preprocessing layers (`build_augmenter`), the one definition behind the offline views and the online
model's on-the-fly augmentation."""

from __future__ import annotations

import logging
import math
from typing import Any

import keras
import numpy as np
import pandas as pd

from all_detection.core.arrays import release_pages, scratch_array
from all_detection.core.model import DIHEDRAL_SYMMETRIES, DihedralView
from all_detection.core.progress import Progress
from all_detection.core.stain import RandomStain

logger = logging.getLogger(__name__)

# Each transform draws from its own seed, fixed by its slot here rather than by which transforms are
# on, so switching colour jitter on leaves the geometric draws of every view as they were.
_TRANSFORM_SLOTS = ("rotation", "shear", "zoom", "flip", "brightness", "contrast", "stain")

# Images arrive and leave as uint8, so the colour layers clip to the same range the pixels live in.
PIXEL_RANGE = (0.0, 255.0)


def build_augmenter(
    transforms: dict[str, Any], seed: int, stain_reference: dict[str, Any] | None = None
) -> keras.Sequential:
    """The paper's random transforms as one stack of Keras preprocessing layers, in the order applied,
    then the colour jitter of `build_colour_jitter`.

    Rotation (`rotation_degrees`, either way), shear (`shear`, on both axes), zoom (`zoom`, in or out,
    aspect kept), flips (`horizontal_flip`, `vertical_flip`). A transform of strength 0 (or a flip set
    false) is left out, so with everything off the stack returns its input unchanged. Points mapped
    from outside the frame are filled by `fill_mode`. Batches of float images in 0-255 of any channel
    count go in and come out: each layer draws one set of parameters per image and applies it to all
    channels alike, so the two halves of a 6-channel (dual) image get the same geometry and colour.
    Only Keras 3 layers are used, so the stack also serves the online-training model, on any backend;
    call it with `training=True`, since the layers pass images through untouched at inference.
    """
    seeds = _slot_seeds(seed)
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
    layers += _colour_layers(transforms, seeds, stain_reference)
    return keras.Sequential(layers or [keras.layers.Identity()], name="augmenter")


def build_colour_jitter(
    transforms: dict[str, Any], seed: int, stain_reference: dict[str, Any] | None = None
) -> keras.Sequential | None:
    """The colour part of the augmentation, or None when it is all off: brightness and contrast jitter
    for lighting (`brightness`, `contrast`), and a random stain for staining batches (`stain`: a
    `RandomStain` of that strength around `stain_reference`, the training images' stain). Exact
    symmetries get only this part; random views get it after their geometry (`build_augmenter`)."""
    layers = _colour_layers(transforms, _slot_seeds(seed), stain_reference)
    return keras.Sequential(layers, name="colour_jitter") if layers else None


def _colour_layers(
    transforms: dict[str, Any], seeds: dict[str, int], stain_reference: dict[str, Any] | None
) -> list[keras.layers.Layer]:
    layers: list[keras.layers.Layer] = []
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
    if transforms["stain"]:
        if stain_reference is None:
            raise ValueError("augmentation.transforms.stain needs the training images' stain reference")
        layers.append(RandomStain(stain_reference, transforms["stain"], seed=seeds["stain"]))
    return layers


def _slot_seeds(seed: int) -> dict[str, int]:
    return dict(zip(_TRANSFORM_SLOTS, _independent_seeds(seed, len(_TRANSFORM_SLOTS)), strict=True))


def _independent_seeds(seed: int, count: int) -> list[int]:
    # Neighbouring seeds (42, 43) must not share draws between layers, which seed + k would do.
    return [int(state) % 2**31 for state in np.random.SeedSequence(seed).generate_state(count)]


def count_views(labels: pd.Series, multiplier: dict[str, float], balance: bool, seed: int) -> np.ndarray:
    """How many views each training image gets, the image itself (view 0) included, in the rows' order.

    A class of n images with multiplier m ends with round(n * m) views exactly (halves round up): every
    image gets floor(m) views and a seeded random choice of the remaining round(n * m) - n * floor(m)
    images one more. With `balance`, m is replaced per class so that every class ends with the same
    total T = round(n_max * mean(m)), where n_max is the image count of the largest class and the mean
    is over the multipliers of the classes present; class c then gets T / n_c per image, split the same
    way. Every multiplier must be at least 1, since the source always stays in the set as view 0.
    """
    counts = labels.value_counts()
    missing = sorted(set(counts.index) - set(multiplier))
    if missing:
        raise ValueError(f"augmentation.multiplier has no entry for training classes {missing}")
    too_small = {label: multiplier[label] for label in counts.index if multiplier[label] < 1}
    if too_small:
        raise ValueError(f"augmentation.multiplier must be at least 1 (the source is view 0): {too_small}")
    if balance:
        mean_multiplier = np.mean([multiplier[label] for label in counts.index])
        target = _round_half_up(counts.max() * mean_multiplier)
        totals = {label: target for label in counts.index}
    else:
        totals = {label: _round_half_up(n * multiplier[label]) for label, n in counts.items()}
    rng = np.random.default_rng(seed)
    views = np.zeros(len(labels), dtype=np.int64)
    for label in sorted(totals):
        rows = np.flatnonzero((labels == label).to_numpy())
        whole, extra = divmod(totals[label], len(rows))
        views[rows] = whole
        views[rng.choice(rows, size=extra, replace=False)] += 1
    return views


def _round_half_up(value: float) -> int:
    # A small tolerance, so that 5 * 4.3 = 21.499999999999996 counts as the 21.5 it stands for.
    return math.floor(value + 0.5 + 1e-9)


def plan_views(index: pd.DataFrame, augmentation: dict[str, Any], seed: int) -> pd.DataFrame:
    """Which views each image gets, before any is made: one row per view, each image followed by its own.

    An image gets as many views as `count_views` gives it (`augmentation.multiplier` and `balance`),
    the image itself first (view 0), then random transforms. With `augmentation.dihedral_views` its
    first 8 views are its exact symmetries instead, in `DihedralView.of_symmetry` order (the image, its
    three quarter turns, the mirror images of those four: the views dihedral test-time augmentation
    averages over), and only views beyond the eighth are random transforms; every image then has at
    least 8. Columns: `view_id` (`<image_id>#<view>`), `source_id`, `label`, `label_index`, `group`,
    `view` (0 is the source itself), `symmetry` (0-7, the exact symmetry a view is, or -1 for a random
    view) and `source_row`, the image's row in `index` (and in its image stack).
    """
    views_per_image = count_views(index["label"], augmentation["multiplier"], augmentation["balance"], seed)
    exact = DIHEDRAL_SYMMETRIES if augmentation["dihedral_views"] else 1
    views_per_image = np.maximum(views_per_image, exact)
    source_rows = np.repeat(np.arange(len(index)), views_per_image)
    first_rows = np.cumsum(views_per_image) - views_per_image
    view = np.arange(len(source_rows)) - np.repeat(first_rows, views_per_image)
    sources = index.iloc[source_rows].reset_index(drop=True)
    return pd.DataFrame(
        {
            "view_id": sources["image_id"].astype(str) + "#" + pd.Series(view).astype(str),
            "source_id": sources["image_id"],
            "label": sources["label"],
            "label_index": sources["label_index"],
            "group": sources["group"],
            "view": view,
            "symmetry": np.where(view < exact, view, -1),
            "source_row": source_rows,
        }
    )


def render_views(
    images: np.ndarray,
    plan: pd.DataFrame,
    augmentation: dict[str, Any],
    seed: int,
    stain_reference: dict[str, Any] | None = None,
) -> np.ndarray:
    """The pixels of every planned view, in the plan's row order, as one uint8 stack.

    An exact symmetry (`symmetry` 0-7; 0 is the source image unchanged) is turned and mirrored by the
    same `DihedralView` layer test-time augmentation uses, then given the colour jitter
    (`build_colour_jitter`, with `stain_reference` for a random stain) unless it is the source; the
    random views pass through `build_augmenter` (geometry, then colour). Views are made in plan order,
    `augmentation.batch_size` at a time, rounded and clipped back to uint8, so no float copy of the
    whole set is ever held and a memory-mapped `images` is read a batch at a time; the views are
    written to a `scratch_array`, so they leave memory as they are made. The same plan, seed, batch
    size and Keras backend give byte-identical views (each backend has its own random streams).
    """
    source_rows, symmetry = plan["source_row"].to_numpy(), plan["symmetry"].to_numpy()
    augmented_views = scratch_array((len(plan), *images.shape[1:]), np.uint8)
    batch_size = augmentation["batch_size"]
    jitter = build_colour_jitter(augmentation["transforms"], seed, stain_reference)
    for number in range(DIHEDRAL_SYMMETRIES):
        exact = np.flatnonzero(symmetry == number)
        turn = DihedralView.of_symmetry(number)
        for start in range(0, len(exact), batch_size):
            rows = exact[start : start + batch_size]
            sources = np.asarray(images[source_rows[rows]])
            if number == 0:
                augmented_views[rows] = sources
            elif jitter is None:
                augmented_views[rows] = keras.ops.convert_to_numpy(turn(sources))
            else:
                augmented_views[rows] = _as_pixels(jitter(turn(sources.astype(np.float32)), training=True))
            release_pages(images)
            release_pages(augmented_views)

    augmenter = build_augmenter(augmentation["transforms"], seed, stain_reference)
    transformed = np.flatnonzero(symmetry < 0)
    logger.info(
        "Augmenting %d images into %d views (%d exact symmetries, %d random)",
        len(np.unique(source_rows)), len(plan), len(plan) - len(transformed), len(transformed),
    )  # fmt: skip
    progress = Progress(logger, "transformed views", len(transformed))
    for start in range(0, len(transformed), batch_size):
        rows = transformed[start : start + batch_size]
        batch = np.asarray(images[source_rows[rows]], dtype=np.float32)
        augmented_views[rows] = _as_pixels(augmenter(batch, training=True))
        release_pages(images)
        release_pages(augmented_views)
        progress.advance(len(rows))
    return augmented_views


def _as_pixels(views) -> np.ndarray:
    """Float views in 0-255, rounded and clipped back to the uint8 pixels they are stored as."""
    return keras.ops.convert_to_numpy(
        keras.ops.cast(keras.ops.clip(keras.ops.round(views), *PIXEL_RANGE), "uint8")
    )
