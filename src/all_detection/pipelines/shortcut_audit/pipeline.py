"""Wires the shortcut audit of the trained model on the run's splits, then the model card, which says
what the model scores and what it relies on. Part of `kedro run`; `kedro run --pipeline shortcut_audit`
audits the catalog's trained model alone and writes its card again."""

from kedro.pipeline import Node, Pipeline

from all_detection.model_card import model_card_context, write_model_card

from .nodes import (
    assemble_shortcut_audit,
    choose_audit_sample,
    fit_null_models,
    locate_attention,
    plot_shortcut_audit,
    score_counterfactuals,
    shortcut_audit_mlflow_metrics,
)

READING = ["raw_images", "params:shortcut_audit", "params:preprocessing", "params:ingestion"]


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                choose_audit_sample,
                inputs=["test_index", "params:shortcut_audit", "params:split.seed"],
                outputs="audit_sample",
                name="choose_audit_sample_node",
            ),
            Node(
                fit_null_models,
                inputs=[
                    "train_index",
                    "test_index",
                    *READING,
                    "params:evaluation",
                    "params:split.seed",
                ],
                outputs="null_models",
                name="fit_null_models_node",
            ),
            Node(
                score_counterfactuals,
                inputs=[
                    "model",
                    "audit_sample",
                    "test_predictions",
                    *READING,
                    "params:evaluation",
                    "params:split.seed",
                ],
                outputs="counterfactual_tests",
                name="score_counterfactuals_node",
            ),
            Node(
                locate_attention,
                inputs=["model", "audit_sample", "test_predictions", *READING],
                outputs="model_attention",
                name="locate_attention_node",
            ),
            Node(
                assemble_shortcut_audit,
                inputs=[
                    "null_models",
                    "counterfactual_tests",
                    "model_attention",
                    "test_index",
                    "params:shortcut_audit",
                    "params:split.seed",
                ],
                outputs="shortcut_audit",
                name="assemble_shortcut_audit_node",
            ),
            Node(
                shortcut_audit_mlflow_metrics,
                inputs="shortcut_audit",
                outputs="shortcut_audit_metrics",
                name="shortcut_audit_mlflow_metrics_node",
            ),
            Node(
                plot_shortcut_audit,
                inputs="shortcut_audit",
                outputs="shortcut_audit_figure",
                name="plot_shortcut_audit_node",
            ),
            # The card comes last: it states what the model scores and what the audit found it relies on.
            Node(
                model_card_context,
                inputs=["metrics", "training_summary", "data_quality", "shortcut_audit", "params:model"],
                outputs="model_card_context",
                name="model_card_context_node",
            ),
            Node(
                write_model_card,
                inputs="model_card_context",
                outputs="model_card",
                name="write_model_card_node",
            ),
        ],
        tags="shortcut_audit",
    )
