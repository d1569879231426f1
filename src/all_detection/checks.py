"""The checks before a run does any work, each failing with a message that names the parameter, the value
given and what is allowed: the parameters' values against their schema (`all_detection.parameters`), the
folders and files the pipelines about to run will read or write (image folders, model, weights file), the
pipelines' shape against the parameters that shape them, and a scoring model's input against the images
preprocessing makes. `ParameterCheckHooks` runs the first three at the start of every `kedro run`, so a
bad `--params` fails in a second instead of minutes later inside a node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from all_detection.configuration import writes_synthetic_set
from all_detection.layout import DUAL_INPUT, FOLD_PREFIX, TRAINING_MODES, input_channels
from all_detection.parameters import Parameters

# What a run that scores a model without one is told (the catalog's `model` says the same on load).
HOW_TO_GET_A_MODEL = (
    "Train one first with `kedro run` (it saves data/06_models/model.keras), or score with a saved "
    'model: --params "inference.model_uri=models:/all_detection@champion" (or models:/all_detection/'
    "<version>, runs:/<run id>/model, or the path of a .keras file)."
)


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
