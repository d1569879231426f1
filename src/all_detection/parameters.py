"""One typed schema of every parameter in `conf/`: types, ranges and choices, each choice list taken from
the one place the code that uses it defines it (`layout`, `core.choices`).
`all_detection.checks.check_parameters` validates a run's parameters against it before the run starts.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from all_detection.core.choices import (
    AUTO_BATCH_SIZE,
    CLASS_WEIGHTS,
    FEATURE_DTYPES,
    FILL_MODES,
    INPUT_SCALINGS,
    LEARNING_RATE_SCALINGS,
    MIXED_PRECISION,
    TTA_MODES,
    VGG16_BLOCKS,
    VGG16_LAYERS,
)
from all_detection.layout import (
    CHANNEL_ORDERS,
    CLASSES,
    DISTRIBUTIONS,
    INPUT_MODES,
    STAIN_NORMALISATIONS,
    TRAINING_MODES,
)

PositiveInt = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
BatchSize = PositiveInt | Literal[AUTO_BATCH_SIZE]  # type: ignore[valid-type]
# OpenCV's 8-bit HSV scale: H 0-179 (an upper bound may pass 179, as the dataset authors' does), S, V 0-255.
HsvValue = Annotated[int, Field(ge=0, le=255)]
HsvBox = tuple[tuple[HsvValue, HsvValue, HsvValue], tuple[HsvValue, HsvValue, HsvValue]]


class Section(BaseModel):
    # A misspelt key (`training.epoch=3`) would otherwise be ignored silently.
    model_config = ConfigDict(extra="forbid", strict=False)


class Dataset(Section):
    root: str
    synthetic: bool = False


class Overlap(Section):
    candidates: Count
    keypoints: PositiveInt
    min_shared_keypoints: Annotated[int, Field(ge=3)]


class Ingestion(Section):
    min_side_px: PositiveInt
    max_pixels: PositiveInt
    max_file_mb: Annotated[float, Field(gt=0)]
    near_duplicate_max_bits: Annotated[int, Field(ge=0, le=64)]
    overlap: Overlap


class Split(Section):
    test_fraction: Fraction
    val_fraction: Annotated[float, Field(ge=0, lt=1)]
    seed: Count

    @model_validator(mode="after")
    def _leaves_training_images(self) -> Split:
        if self.test_fraction + self.val_fraction >= 1:
            raise ValueError(
                f"split.test_fraction + split.val_fraction must be below 1 to leave training images, "
                f"not {self.test_fraction} + {self.val_fraction}"
            )
        return self


class Corners(Section):
    fraction: Annotated[float, Field(gt=0, le=0.5)]
    painted: bool


class Segmentation(Section):
    """`segmentation.blast_mask`'s recipe: HSV boxes and the optional cleanup."""

    channel_order: Literal[CHANNEL_ORDERS]  # type: ignore[valid-type]
    hsv_ranges: Annotated[list[HsvBox], Field(min_length=1)]
    opening_px: Count = 0
    fill_holes: bool = False
    min_area_px: Count = 0


class Masked(Section):
    dilation_px: Count
    background_level: Annotated[float, Field(ge=0, le=1)]


class Agreement(Section):
    dataset_mask_min_value: Annotated[int, Field(ge=0, le=255)]


class Preprocessing(Section):
    # VGG16's five poolings need at least 32 pixels.
    image_size: Annotated[int, Field(ge=32, le=4096)]
    input_mode: Literal[INPUT_MODES]  # type: ignore[valid-type]
    stain_normalisation: Literal[STAIN_NORMALISATIONS]  # type: ignore[valid-type]
    corners: Corners
    segmentation: Segmentation
    masked: Masked
    agreement: Agreement


class Transforms(Section):
    rotation_degrees: Annotated[float, Field(ge=0, le=180)]
    shear: Annotated[float, Field(ge=0)]
    zoom: Annotated[float, Field(ge=0, lt=1)]
    horizontal_flip: bool
    vertical_flip: bool
    fill_mode: Literal[FILL_MODES]  # type: ignore[valid-type]
    brightness: Annotated[float, Field(ge=0, le=1)]
    contrast: Annotated[float, Field(ge=0, le=1)]
    stain: Annotated[float, Field(ge=0, le=3)]


class Augmentation(Section):
    multiplier: dict[str, Annotated[float, Field(ge=1)]]
    balance: bool
    dihedral_views: bool
    batch_size: PositiveInt
    transforms: Transforms
    examples_per_class: Count

    @field_validator("multiplier", mode="before")
    @classmethod
    def _one_per_class(cls, value: Any) -> Any:
        if not isinstance(value, dict) or set(value) != set(CLASSES):
            raise ValueError(
                f"must give each class {list(CLASSES)} its own number of views (at least 1), e.g. "
                '--params "augmentation.multiplier.Benign=5"'
            )
        return value


class Head(Section):
    conv_filters: list[PositiveInt]
    dense_units: list[PositiveInt]
    dropout: list[Annotated[float, Field(ge=0, lt=1)]]
    batch_norm_momentum: Fraction

    @model_validator(mode="after")
    def _a_dropout_per_dense_layer(self) -> Head:
        if len(self.dropout) != len(self.dense_units):
            raise ValueError("model.head.dropout needs one rate per model.head.dense_units layer")
        return self


class Model(Section):
    base_weights: str | None
    random_weights_fallback: bool
    input_scaling: Literal[INPUT_SCALINGS]  # type: ignore[valid-type]
    head: Head


class ReduceLr(Section):
    factor: Fraction
    patience: Count
    min_lr: Annotated[float, Field(ge=0)]


class Training(Section):
    mode: Literal[TRAINING_MODES]  # type: ignore[valid-type]
    epochs: PositiveInt
    batch_size: BatchSize
    learning_rate: Annotated[float, Field(gt=0)]
    learning_rate_scaling: Literal[LEARNING_RATE_SCALINGS]  # type: ignore[valid-type]
    early_stopping_patience: Count
    reduce_lr: ReduceLr
    cache_at: Literal[VGG16_LAYERS]  # type: ignore[valid-type]
    class_weight: Literal[CLASS_WEIGHTS]  # type: ignore[valid-type]
    feature_dtype: Literal[FEATURE_DTYPES]  # type: ignore[valid-type]
    feature_batch_size: BatchSize
    fine_tune_blocks: Annotated[int, Field(ge=0, le=VGG16_BLOCKS)]
    fine_tune_epochs: Count
    fine_tune_learning_rate: Annotated[float, Field(gt=0)]
    mixed_precision: Literal[MIXED_PRECISION]  # type: ignore[valid-type]
    distribution: Literal[DISTRIBUTIONS]  # type: ignore[valid-type]
    workers: PositiveInt


class Evaluation(Section):
    tta: Literal[TTA_MODES]  # type: ignore[valid-type]
    bootstrap_samples: PositiveInt
    confidence_level: Fraction
    ece_bins: PositiveInt
    gradcam_per_class: Count
    misclassified_max: Count
    predict_batch_size: PositiveInt


class ShortcutAudit(Section):
    images_per_class: PositiveInt
    corner_patch_px: PositiveInt
    thumbnail_px: PositiveInt
    colour_range_quantile: Annotated[float, Field(gt=0, le=1)]


class CrossValidation(Section):
    folds: Annotated[int, Field(ge=2)]


class Inference(Section):
    input_dir: str
    model_uri: str | None
    batch_size: PositiveInt


class InputModeRun(Section):
    """One run of input_mode_comparison: the preprocessing settings it reads (`<mode>_input`)."""

    preprocessing: Preprocessing


class Parameters(BaseModel):
    """Every section the pipelines read; other top-level keys (`demo`, your own) pass unchecked."""

    model_config = ConfigDict(extra="allow")
    dataset: Dataset
    ingestion: Ingestion
    split: Split
    preprocessing: Preprocessing
    augmentation: Augmentation
    model: Model
    training: Training
    evaluation: Evaluation
    shortcut_audit: ShortcutAudit
    cross_validation: CrossValidation
    inference: Inference
    original_input: InputModeRun
    segmented_input: InputModeRun
    masked_input: InputModeRun
    dual_input: InputModeRun

    @model_validator(mode="after")
    def _each_mode_run_has_its_mode(self) -> Parameters:
        for mode in INPUT_MODES:
            given = getattr(self, f"{mode}_input").preprocessing.input_mode
            if given != mode:
                raise ValueError(f"{mode}_input.preprocessing.input_mode must be {mode!r}, not {given!r}")
        return self
