"""One typed schema of every parameter in `conf/`, checked before a run does any work.

`check_parameters` validates the values (types, ranges, choices) and `check_sources` the folders and
files the pipelines about to run will read or write (image folders, model, weights file), so a bad
`--params` fails in a second with a message that names the parameter, the value given and what is
allowed, instead of minutes later inside a node. `ParameterCheckHooks` runs both at the start of
every `kedro run`.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Annotated, Any, Literal

import click
from kedro.config import OmegaConfigLoader
from kedro.utils import find_kedro_project
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from all_detection.layout import (
    CLASSES,
    DISTRIBUTIONS,
    DUAL_INPUT,
    FOLD_PREFIX,
    INPUT_MODES,
    STAIN_NORMALISATIONS,
    TRAINING_MODES,
    input_channels,
)

# What a run that scores a model without one is told (the catalog's `model` says the same on load).
HOW_TO_GET_A_MODEL = (
    "Train one first with `kedro run` (it saves data/06_models/model.keras), or score with a saved "
    'model: --params "inference.model_uri=models:/all_detection@champion" (or models:/all_detection/'
    "<version>, runs:/<run id>/model, or the path of a .keras file)."
)

PositiveInt = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
BatchSize = PositiveInt | Literal["auto"]
VGG16_LAYERS = [f"block{block}_conv{conv}" for block in (1, 2) for conv in (1, 2)] + [
    f"block{block}_conv{conv}" for block in (3, 4, 5) for conv in (1, 2, 3)
]
VGG16_LAYERS += [f"block{block}_pool" for block in range(1, 6)]
CacheAt = Literal[tuple(sorted(VGG16_LAYERS))]  # type: ignore[valid-type]


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


class Preprocessing(Section):
    # VGG16's five poolings need at least 32 pixels.
    image_size: Annotated[int, Field(ge=32, le=4096)]
    input_mode: Literal[INPUT_MODES]  # type: ignore[valid-type]
    stain_normalisation: Literal[STAIN_NORMALISATIONS]  # type: ignore[valid-type]
    corners: Corners
    segmentation: dict[str, Any]
    masked: dict[str, Any]
    agreement: dict[str, Any]


class Transforms(Section):
    rotation_degrees: Annotated[float, Field(ge=0, le=180)]
    shear: Annotated[float, Field(ge=0)]
    zoom: Annotated[float, Field(ge=0, lt=1)]
    horizontal_flip: bool
    vertical_flip: bool
    fill_mode: Literal["reflect", "wrap", "constant", "nearest"]
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
    input_scaling: Literal["imagenet", "unit"]
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
    learning_rate_scaling: Literal["sqrt", "none"]
    early_stopping_patience: Count
    reduce_lr: ReduceLr
    cache_at: CacheAt
    class_weight: Literal["none", "balanced"]
    feature_dtype: Literal["float16", "float32"]
    feature_batch_size: BatchSize
    fine_tune_blocks: Annotated[int, Field(ge=0, le=5)]
    fine_tune_epochs: Count
    fine_tune_learning_rate: Annotated[float, Field(gt=0)]
    mixed_precision: Literal["auto", "on", "off"]
    distribution: Literal[DISTRIBUTIONS]  # type: ignore[valid-type]
    workers: PositiveInt


class Evaluation(Section):
    tta: Literal["none", "dihedral"]
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


class InferenceSetupError(click.ClickException):
    """The images to score, the model, or the two together are not usable as configured.

    A `ClickException`, so `kedro run` ends with this one message and exit code 1, not a traceback:
    the user's fix is a path or a parameter, not a line of code.
    """


def check_input_shape(takes: tuple, preprocessing: dict[str, Any], model: str = "The model") -> None:
    """Raise `InferenceSetupError` unless a model whose images are `takes` (height, width, channels)
    takes the images `preprocessing` makes: the Keras model inference loads, or an MLflow model's
    signature (batch scoring).

    The model's input shape is fixed at training by `preprocessing.image_size` and `input_mode`;
    scoring with other values would feed it images it was never shown, or fail deep inside Keras.
    """
    size, mode = preprocessing["image_size"], preprocessing["input_mode"]
    expected = (size, size, input_channels(mode))
    if takes != expected:
        dual = takes[-1] == input_channels(DUAL_INPUT)
        trained_modes = DUAL_INPUT if dual else "original, segmented or masked"
        raise InferenceSetupError(
            f"{model} takes images of shape {takes}, but preprocessing makes {expected} (image_size "
            f"{size}, input_mode {mode!r}). Score with the preprocessing the model was trained with: "
            f'--params "preprocessing.image_size={takes[0]},preprocessing.input_mode=..." '
            f"({takes[-1]} channels: {trained_modes})."
        )


class ParameterError(click.ClickException):
    """Parameters a run cannot use; the message lists each one with its value and what is allowed."""

    def __init__(self, problems: list[str]) -> None:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(
            f"The run's parameters cannot be used, so nothing was run:\n{lines}\n"
            'Fix them in conf/base/parameters_*.yml or with --params "name=value".'
        )
        self.problems = problems


def parameter_feed(parameters: dict[str, Any]) -> dict[str, Any]:
    """The `params:` inputs a Kedro context feeds a pipeline: `params:a` for each section and
    `params:a.b` for every key inside it, at any depth, for running nodes outside a session."""
    fed: dict[str, Any] = {}

    def add(name: str, value: Any) -> None:
        fed[f"params:{name}"] = value
        if isinstance(value, dict):
            for key, inner in value.items():
                add(f"{name}.{key}", inner)

    for key, value in parameters.items():
        add(key, value)
    return fed


def project_parameters(
    project: Path, env: str | None = None, runtime_params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The parameters of the project at `project` as a run in `env` sees them (base, then `env` or the
    default run environment), `runtime_params` applied as `--params` would: Kedro's config loader with
    the project's settings (merge strategy, the `merge` resolver), for code outside a Kedro session."""
    from all_detection import settings  # noqa: PLC0415 - the settings import this module

    conf_source = project / getattr(settings, "CONF_SOURCE", "conf")
    loader = OmegaConfigLoader(
        str(conf_source), env=env, runtime_params=runtime_params, **settings.CONFIG_LOADER_ARGS
    )
    return loader["parameters"]


def merged_config(*sections: Any) -> Any:
    """The OmegaConf resolver `merge`: the sections deep-merged, later keys replacing earlier ones."""
    from omegaconf import OmegaConf  # noqa: PLC0415 - only the config loader calls it

    return OmegaConf.merge(*sections)


def _value_at(parameters: dict[str, Any], location: tuple[Any, ...]) -> Any:
    value: Any = parameters
    for key in location:
        if not isinstance(value, dict) or key not in value:
            return "(missing)"
        value = value[key]
    return value


def check_parameters(parameters: dict[str, Any]) -> Parameters:
    """The parameters, validated; a `ParameterError` naming every bad one otherwise."""
    try:
        return Parameters.model_validate(parameters)
    except ValidationError as error:
        problems = []
        for issue in error.errors():
            # Union members add their type to the location (`int`, `literal['auto']`): drop them.
            location = tuple(part for part in issue["loc"] if isinstance(part, str) and "[" not in part)
            location = tuple(part for part in location if part not in ("int", "str", "float", "bool"))
            name = ".".join(str(part) for part in location)
            message = issue["msg"].removeprefix("Value error, ")
            problems.append(f"{name} = {_value_at(parameters, location)!r}: {message}")
        raise ParameterError(sorted(set(problems), key=problems.index)) from None


def check_sources(parameters: dict[str, Any], pipeline: Any, catalog: Any, project_path: Path) -> None:
    """What the run will read exists and what it will write may be written, before any node runs: the
    image folders it reads (`raw_images` at dataset.root, `inference_images` at inference.input_dir),
    the folder the demo writes its synthetic set into, the model it scores with, and the weights file
    it trains from (only the demo may fall back to a random base). A `ParameterError` lists them all.
    Relative paths in the parameters are relative to the project, as the catalog makes them.
    """
    reads, writes = pipeline.inputs(), pipeline.all_outputs()
    problems = []
    if "raw_images" in writes and not (
        writes_synthetic_set(parameters) and parameters["dataset"]["synthetic"]
    ):
        # Synthetic images in a folder whose reports would call them real: only the demo env writes them.
        problems.append(
            "the demo pipeline writes a synthetic set, which only the demo environment asks for (with "
            "demo.synthetic_dataset) and reports as synthetic (dataset.synthetic: true): kedro run --env demo"
        )
    for name, parameter in (("raw_images", "dataset.root"), ("inference_images", "inference.input_dir")):
        if name not in reads | writes:
            continue
        folder, given = catalog.get(name), _value_at(parameters, tuple(parameter.split(".")))
        if (Path(project_path) / str(given)).resolve() != folder.path.resolve():
            problems.append(
                f"{parameter} = {given!r}, but the catalog's {name} reads '{folder.path}': set "
                f"{parameter} in conf/<env>/globals.yml, where both read it, or for one run with --params"
            )
        elif name in reads and not folder.path.is_dir():
            problems.append(f"{parameter} = {given!r}: no such folder; {_WHAT_FOLDERS_HOLD[name]}")
        elif name in writes and (refusal := folder.writable()):
            problems.append(
                f"{parameter} = {given!r}: {refusal}. --env demo writes its synthetic set into the image "
                f"folder: to run on the images in {given!r}, leave out --env demo; to put the demo set "
                'in a new folder, pass --params "dataset.root=NEW"'
            )
    # The MLflow model the catalog's `model` will load instead of the trained file, if any.
    model = catalog.get("model")
    uri = model.model_uri
    if "model" in writes and uri:
        problems.append(
            f"inference.model_uri = {uri!r}: this run trains the model it evaluates; leave model_uri out, or "
            "score that model alone with --pipeline inference"
        )
    elif "model" in reads and not uri and not model.filepath.is_file():
        problems.append(f"no trained model at '{model.filepath}'. {HOW_TO_GET_A_MODEL}")
    weights, fallback = parameters["model"]["base_weights"], parameters["model"]["random_weights_fallback"]
    local_file = weights not in (None, "null", "None", "imagenet") and not fallback
    if "model" in sections_read(pipeline) and local_file and not Path(weights).expanduser().is_file():
        problems.append(
            f"model.base_weights = {weights!r}: no such file; pass a local "
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5, imagenet (downloads it) or null"
        )
    if problems:
        raise ParameterError(problems)


_WHAT_FOLDERS_HOLD = {
    "raw_images": "it must hold the Kaggle layout Original/{Benign,Early,Pre,Pro}/*.jpg (README, Running on "
    "the real dataset), or try the synthetic demo: kedro run --env demo",
    "inference_images": "point to a folder of images to score (searched recursively, any layout)",
}


# The parameters of the run being set up (its environment and --params), recorded by
# `ParameterCheckHooks` before Kedro loads the pipelines, for the pipelines whose shape a parameter sets.
_run_parameters: dict[str, Any] | None = None
# The configuration of the newest Kedro session's context, while that context lives (a weak reference).
_session_configuration: weakref.ref[SessionConfigLoader] | None = None


class SessionConfigLoader(OmegaConfigLoader):
    """Kedro's config loader (settings.CONFIG_LOADER_CLASS), which a session makes for its context with
    its --env and --params: it remembers itself as the session's configuration, so the pipelines the
    session registers take their shape from them even where no hook runs (kedro-viz turns the hooks off,
    and `kedro viz run --env demo` would otherwise shape them by KEDRO_ENV)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        global _session_configuration  # noqa: PLW0603 - one session per process at a time, as Kedro's
        _session_configuration = weakref.ref(self)


def remember_run_parameters(parameters: dict[str, Any] | None) -> None:
    """Record the run's parameters, or with None (its end) forget them and its session's configuration."""
    global _run_parameters, _session_configuration  # noqa: PLW0603 - one run per process at a time
    _run_parameters = parameters
    if parameters is None:
        _session_configuration = None


def run_parameters() -> dict[str, Any] | None:
    """The parameters of the run being set up, or None outside a run (kedro-viz, a notebook's import)."""
    return _run_parameters


def shaping_parameters(project_path: Path | None = None) -> dict[str, Any] | None:
    """The parameters that shape pipelines as they are registered (the training mode, the number of
    folds, the demo's synthetic set): the run's own (its --env and --params) in a `kedro run`; in a
    session that runs nothing (kedro-viz's, `kedro viz build --env demo`), its configuration's;
    otherwise (a notebook) the project's conf for KEDRO_ENV, read through Kedro's config loader with
    the project's settings; None outside a Kedro project."""
    parameters = run_parameters()
    if parameters is not None:
        return parameters
    session_configuration = _session_configuration() if _session_configuration else None
    if session_configuration is not None:
        return session_configuration["parameters"]
    project = project_path or find_kedro_project(Path.cwd())
    return None if project is None else project_parameters(project, os.environ.get("KEDRO_ENV"))


def writes_synthetic_set(parameters: dict[str, Any] | None) -> bool:
    """Whether the parameters ask for the demo's synthetic set in the image folder (conf/demo)."""
    return bool(((parameters or {}).get("demo") or {}).get("synthetic_dataset"))


def check_pipeline_shape(parameters: dict[str, Any], pipeline: Any) -> None:
    """The pipeline has the shape the run's parameters give it: as many cross-validation folds
    (namespaces `fold_1`...) as `cross_validation.folds` says, and the training nodes of
    `training.mode`. Both shape the pipeline when it is registered (`shaping_parameters`), so a run
    whose pipelines were registered before its parameters were known cannot honour other values."""
    problems = []
    registered = {
        node.namespace.split(".")[0]
        for node in pipeline.nodes
        if node.namespace and node.namespace.split(".")[0].removeprefix(FOLD_PREFIX).isdigit()
    }
    asked = int(parameters["cross_validation"]["folds"])
    if registered and len(registered) != asked:
        problems.append(
            f"cross_validation.folds = {asked}: the cross_validation pipeline was registered with "
            f"{len(registered)} folds"
        )
    modes = {tag for node in pipeline.nodes for tag in node.tags if tag in TRAINING_MODES}
    mode = parameters["training"]["mode"]
    if modes and modes != {mode}:
        problems.append(f"training.mode = {mode!r}: the pipeline was registered for {sorted(modes)} training")
    if problems:
        raise ParameterError(
            [
                f"{problem}, and that shapes the pipeline; start a new session (a new `kedro run`) with it"
                for problem in problems
            ]
        )


def sections_read(pipeline: Any) -> set[str]:
    """The parameter sections (`params:<section>`) that a pipeline's nodes take as inputs."""
    sections = set()
    for node in pipeline.nodes:
        for name in node.inputs:
            if name.startswith("params:"):
                sections.add(name.removeprefix("params:").split(".")[0])
    return sections
