"""Speed and memory of the project's stages on this machine; the last line printed is one JSON object.

Run from the project root: `python benchmarks/run.py` (real dataset shape) or `--quick` (CI-sized).
Results also go to `benchmarks/results/<UTC time>.json`. Absolute figures depend on the machine; compare
ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from all_detection.layout import CLASSES
from all_detection.pipelines.ingestion.nodes import (
    assign_splits,
    build_manifest,
    group_duplicates,
    pair_segmented_copies,
    quarantine_conflicting_duplicates,
    scan_image_folder,
)
from all_detection.synthetic import write_synthetic_dataset

RESULTS = Path(__file__).parent / "results"
# The real dataset has 3256 images in four classes, each with a Segmented twin.
REAL_IMAGES_PER_CLASS = 3256 // len(CLASSES)
INGESTION = {"min_side_px": 32, "max_pixels": 40_000_000, "max_file_mb": 100, "near_duplicate_max_bits": 10}
SPLIT = {"test_fraction": 0.2, "val_fraction": 0.1, "seed": 42}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def benchmark_ingestion(per_class: int, image_size: int) -> dict[str, float]:
    """Write a synthetic set of the given shape, then time the ingestion nodes over it."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "ALL"
        started = time.perf_counter()
        write_synthetic_dataset(root, per_class=per_class, image_size=image_size, seed=0)
        generated = time.perf_counter() - started
        files = 2 * per_class * len(CLASSES)

        started = time.perf_counter()
        inventory = scan_image_folder({"root": str(root)}, INGESTION)
        scanned = time.perf_counter() - started
        table = pair_segmented_copies(quarantine_conflicting_duplicates(inventory))
        table = group_duplicates(table, INGESTION["near_duplicate_max_bits"])
        build_manifest(assign_splits(table, SPLIT))
        ingested = time.perf_counter() - started
    return {
        "files": files,
        "synthetic_images_per_s": round(files / generated, 1),
        "ingestion_scan_files_per_s": round(files / scanned, 1),
        "ingestion_files_per_s": round(files / ingested, 1),
        "ingestion_s": round(ingested, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a CI-sized smoke run (seconds)")
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()

    per_class = 25 if args.quick else REAL_IMAGES_PER_CLASS
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "mode": "quick" if args.quick else "full",
        "image_size": args.image_size,
        **benchmark_ingestion(per_class, args.image_size),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"{stamp}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
