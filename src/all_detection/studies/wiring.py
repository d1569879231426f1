"""How a study is wired from the project's own pipelines: one model run, repeated as namespaced variants
(`paper`, `fold_2`, `masked_input`), and the node that gathers their MLflow records."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from kedro.pipeline import Node, Pipeline

from all_detection.pipelines import evaluation, shortcut_audit, training
from all_detection.studies.nodes import child_runs, figures_by_file, mlflow_run

#: How the stages name the figures they draw (`confusion_matrix_figure`, `augmentation_examples`).
FIGURE_SUFFIXES = ("_figure", "_examples")


def model_run() -> Pipeline:
    """Training, evaluation and the shortcut audit as `kedro run` wires them, less the model
    registration (a study trains several models for comparison, none of which is the project's model
    of record), plus the run's record for its MLflow child run. A variant reads the image folder
    (`raw_images`, for the audit) as it is: list it among the variant's `shared` inputs. The run's
    reports go to its MLflow child run, so kedro-viz draws none of them around the variant's box."""
    trained = training.create_pipeline()
    record = Node(
        mlflow_run,
        inputs=[
            "metrics",
            "shortcut_audit",
            "evaluation_metrics",
            "shortcut_audit_metrics",
            "model_card",
            "classification_report",
        ],
        outputs="mlflow_run",
        name="mlflow_run_node",
    )
    evaluated = evaluation.create_pipeline()
    unregistered = trained - trained.only_nodes_with_tags("registration")
    unranked = evaluated - evaluated.only_nodes_with_tags("registration")
    return unregistered + unranked + shortcut_audit.create_pipeline() + Pipeline([record])


def variant(
    pipeline: Pipeline,
    namespace: str,
    shared: Iterable[str] = (),
    renamed: Mapping[str, str] | None = None,
    overridden: Iterable[str] = (),
) -> Pipeline:
    """One variant of a study: `pipeline` with its datasets prefixed `<namespace>.`, except the `shared`
    inputs (read as they are) and the `renamed` ones (read from another dataset); those the pipeline
    does not read (the training mode decides which images it reads) are left out. Parameters stay
    shared, but for the `overridden` ones, which the variant reads from `params:<namespace>.<name>`
    (`params:masked_input.preprocessing`): its settings in conf, usually the shared ones with a change
    (see conf/base/parameters_input_mode_comparison.yml). The variant's figures (`*_figure`,
    `*_examples`) are gathered into one dataset, `<namespace>.figures` (`figures_by_file`)."""
    overridden = set(overridden)
    figures = sorted(name for name in pipeline.outputs() if name.endswith(FIGURE_SUFFIXES))
    if figures:
        pipeline += Pipeline(
            [
                Node(
                    figures_by_file,
                    inputs={name: name for name in figures},
                    outputs="figures",
                    name="gather_figures_node",
                )
            ]
        )
    parameters = {name for name in pipeline.inputs() if name.startswith("params:")} - overridden
    inputs = {name: name for name in shared} | dict(renamed or {})
    inputs = {name: source for name, source in inputs.items() if name in pipeline.inputs()}
    return Pipeline(pipeline, namespace=namespace, inputs=inputs, parameters=parameters)


def child_runs_node(namespaces: Mapping[str, str], output: str) -> Node:
    """The node that gathers each variant's MLflow record (`<namespace>.mlflow_run`) under its run's
    name (`namespaces`: run name to namespace) into the study's `MlflowChildRunsDataset` `output`."""
    return Node(
        child_runs,
        inputs={name: f"{namespace}.mlflow_run" for name, namespace in namespaces.items()},
        outputs=output,
        name=f"{output}_node",
    )
