"""A synthetic dataset folder holding every defect real folders have, with the verdict each file deserves."""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from all_detection.synthetic import write_synthetic_dataset


def encode(rgb: np.ndarray, image_format: str = "JPEG", mode: str | None = None, **save_args) -> bytes:
    image = Image.fromarray(rgb)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, image_format, **save_args)
    return buffer.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height grey pixels but carries almost no data: a bomb's shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(width + 1)))
        + chunk(b"IEND", b"")
    )


def write_defective_dataset(root: Path, image_size: int = 64) -> dict[str, str | None]:
    """A small synthetic set plus one file of every kind that must be quarantined or accepted.

    Returns the expected verdict for every file written: its quarantine reason, or None when the file
    must be accepted. Files the synthetic generator wrote are all expected to be accepted.
    """
    write_synthetic_dataset(root, per_class=6, image_size=image_size, seed=3)
    expected: dict[str, str | None] = {
        path.relative_to(root).as_posix(): None for path in root.rglob("*") if path.is_file()
    }
    benign = root / "Original" / "Benign"
    early_image = np.asarray(Image.open(root / "Original/Early/WBC-Malignant-Early-001.jpg"))
    good_jpeg = (benign / "WBC-Benign-001.jpg").read_bytes()

    def put(relative: str, data: bytes, reason: str | None) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[relative] = reason

    # Broken bytes.
    put("Original/Benign/WBC-Benign-901.jpg", b"", "empty file")
    put("Original/Benign/WBC-Benign-902.jpg", good_jpeg[: len(good_jpeg) // 2], "truncated image")
    put(
        "Original/Benign/WBC-Benign-903.jpg",
        good_jpeg[:200] + bytes(600) + good_jpeg[800:],
        "undecodable image",
    )
    put("Original/Benign/WBC-Benign-904.jpg", b"<html>Kaggle login required</html>", "not an image")
    put("Original/Benign/WBC-Benign-905.jpg", encode(early_image[:20, :24]), "too small")
    put("Original/Benign/WBC-Benign-906.png", png_header_claiming(30_000, 30_000), "decompression bomb")
    put("Original/Benign/WBC-Benign-907.png", png_header_claiming(7_000, 7_000), "decompression bomb")
    # Hidden, system and misplaced files.
    put("Original/Benign/.DS_Store", b"\x00\x00\x00\x01Bud1", "hidden or system file")
    put("Original/Benign/._WBC-Benign-001.jpg", b"\x00\x05\x16\x07AppleDouble", "hidden or system file")
    put("Original/Pre/Thumbs.db", b"\xd0\xcf\x11\xe0", "hidden or system file")
    put(".ipynb_checkpoints/Original/Benign/WBC-Benign-001.jpg", good_jpeg, "hidden or system file")
    put("README.txt", b"downloaded from Kaggle", "outside a known class folder")
    put("Original/WBC-Benign-999.jpg", good_jpeg, "outside a known class folder")
    put("Original/Unknown/WBC-Unknown-001.jpg", encode(early_image), "outside a known class folder")
    put("Original/Benign/rejected/WBC-Benign-001.jpg", good_jpeg, "outside a known class folder")
    # Links and special files: never followed, never read.
    outside = root.parent / f"{root.name}-elsewhere"
    outside.mkdir(exist_ok=True)
    (outside / "WBC-Benign-500.jpg").write_bytes(good_jpeg)
    (benign / "WBC-Benign-800.jpg").symlink_to(benign / "WBC-Benign-002.jpg")
    (benign / "WBC-Benign-801.jpg").symlink_to(root / "does-not-exist.jpg")
    (root / "Original" / "Linked").symlink_to(outside, target_is_directory=True)
    expected["Original/Benign/WBC-Benign-800.jpg"] = "symbolic link (not followed)"
    expected["Original/Benign/WBC-Benign-801.jpg"] = "symbolic link (not followed)"
    expected["Original/Linked"] = "symbolic link (not followed)"
    os.mkfifo(benign / "WBC-Benign-802.jpg")
    expected["Original/Benign/WBC-Benign-802.jpg"] = "not a regular file"
    # An empty folder named like an image: a user would count it as one, so it gets a row too.
    (benign / "WBC-Benign-803.jpg").mkdir()
    expected["Original/Benign/WBC-Benign-803.jpg"] = "not a regular file"
    # The same bytes under two labels: neither can be trusted. Their Segmented twins go with them.
    shutil.copy(
        root / "Original/Early/WBC-Malignant-Early-002.jpg", root / "Original/Pre/WBC-Malignant-Pre-002.jpg"
    )
    expected["Original/Early/WBC-Malignant-Early-002.jpg"] = "byte-identical files under different labels"
    expected["Original/Pre/WBC-Malignant-Pre-002.jpg"] = "byte-identical files under different labels"
    expected["Segmented/Early/WBC-Malignant-Early-002.jpg"] = "its Original is quarantined"
    expected["Segmented/Pre/WBC-Malignant-Pre-002.jpg"] = "its Original is quarantined"
    put("Segmented/Benign/WBC-Benign-901.jpg", encode(early_image), "its Original is quarantined")
    put("Segmented/Pro/WBC-Malignant-Pro-950.jpg", encode(early_image), "Segmented image without an Original")
    # Exact and near duplicates under one label: accepted, grouped, kept on one side of the split.
    shutil.copy(benign / "WBC-Benign-003.jpg", benign / "WBC-Benign-903-copy.jpg")
    expected["Original/Benign/WBC-Benign-903-copy.jpg"] = None
    benign_image = np.asarray(Image.open(benign / "WBC-Benign-004.jpg"))
    put("Original/Benign/WBC-Benign-904-reencoded.jpg", encode(benign_image, quality=60), None)
    # Valid images in other modes and containers: accepted and read as RGB.
    # A grey copy of an Early image under Pro: accepted, but a near duplicate across labels, reported.
    put("Original/Pro/WBC-Malignant-Pro-901.jpg", encode(early_image, mode="L"), None)
    put("Original/Pro/WBC-Malignant-Pro-902.jpg", encode(np.roll(early_image, 9, 0), mode="CMYK"), None)
    put(
        "Original/Pro/WBC-Malignant-Pro-903.png",
        encode(np.roll(early_image, 17, 1), "PNG", mode="RGBA"),
        None,
    )
    put("Original/Pro/WBC-Malignant-Pro-904.jpg", encode(np.roll(early_image, 25, 0), "PNG"), None)
    put("Original/Pro/WBC-Malignant-Pro-905.JPG", encode(np.roll(early_image, 33, 1)), None)
    put("Original/Pro/WBC-Malignant-Pro-906-lymphoblaste-élevé-白血病.jpg", encode(early_image[::-1]), None)
    large = np.asarray(Image.fromarray(early_image[:, ::-1]).resize((1600, 1200)))
    put("Original/Pro/WBC-Malignant-Pro-907.jpg", encode(large), None)
    wide_grey = (early_image[..., 0].astype(np.uint16) * 257)[::-1, ::-1]
    put("Original/Pro/WBC-Malignant-Pro-908.png", encode(wide_grey, "PNG"), None)
    return expected
