"""Wires ingestion: scan the image folder (`raw_images`), settle labels, duplicates and overlapping
fields, split, measure the dataset's own segmentation against the project's, report."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    assign_splits,
    build_manifest,
    describe_data,
    find_overlapping_fields,
    group_duplicates,
    measure_segmentation_agreement,
    pair_segmented_copies,
    quarantine_conflicting_duplicates,
    scan_image_folder,
    summarise_data_quality,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                scan_image_folder,
                inputs=["raw_images", "params:ingestion"],
                outputs="file_inventory",
                name="scan_image_folder_node",
            ),
            Node(
                quarantine_conflicting_duplicates,
                inputs="file_inventory",
                outputs="label_checked_files",
                name="quarantine_conflicting_duplicates_node",
            ),
            Node(
                pair_segmented_copies,
                inputs="label_checked_files",
                outputs="paired_files",
                name="pair_segmented_copies_node",
            ),
            Node(
                find_overlapping_fields,
                inputs=["paired_files", "raw_images", "params:ingestion", "params:preprocessing.corners"],
                outputs="overlapping_fields",
                name="find_overlapping_fields_node",
            ),
            Node(
                group_duplicates,
                inputs=["paired_files", "params:ingestion.near_duplicate_max_bits", "overlapping_fields"],
                outputs="grouped_files",
                name="group_duplicates_node",
            ),
            Node(
                assign_splits,
                inputs=["grouped_files", "params:split"],
                outputs="split_files",
                name="assign_splits_node",
            ),
            Node(build_manifest, inputs="split_files", outputs="manifest", name="build_manifest_node"),
            # Logged with the run: the manifest's digest and counts, and its rows as the run's dataset.
            Node(
                describe_data,
                inputs=["manifest", "params:dataset"],
                outputs="data_provenance",
                name="describe_data_node",
            ),
            Node(
                measure_segmentation_agreement,
                inputs=["manifest", "raw_images", "params:preprocessing", "params:ingestion"],
                outputs="segmentation_agreement",
                name="measure_segmentation_agreement_node",
            ),
            Node(
                summarise_data_quality,
                inputs=["manifest", "segmentation_agreement", "params:dataset", "params:split"],
                outputs="data_quality",
                name="summarise_data_quality_node",
            ),
        ],
        tags="ingestion",
    )
