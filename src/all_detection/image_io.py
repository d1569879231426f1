"""Safe reading of image files: one gate for every file, at ingestion, preprocessing and inference.

`ImageFolder` is a folder of images as the pipelines read it (what the catalog's raw-image datasets
load): `walk_without_following_links` lists its files without entering links, `inspect_file` gives any
file its verdict (quarantined for where or what it is, or decoded in full by `decode_rgb`), and
`read_regular_file` reads one without following a link, whatever changed since it was listed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from all_detection.core.progress import Progress
from all_detection.layout import OK, ORIGINAL_DIR, QUARANTINED, SEGMENTED_DIR

logger = logging.getLogger(__name__)

# Quarantine reasons a file's bytes can earn. They are fixed phrases so reports can count by reason;
# the specifics of each case go into the detail text beside them.
EMPTY = "empty file"
NOT_AN_IMAGE = "not an image"
DECOMPRESSION_BOMB = "decompression bomb"
TRUNCATED = "truncated image"
UNDECODABLE = "undecodable image"
TOO_SMALL = "too small"


class UnusableImage(ValueError):
    """A file's bytes that cannot be used as an image; `reason` is one of the fixed phrases above."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodedImage:
    """A fully decoded image as RGB uint8 (height, width, 3), with what the file itself declared."""

    rgb: np.ndarray
    file_format: str
    file_mode: str


def decode_limits(ingestion: dict[str, Any]) -> dict[str, int]:
    """`decode_rgb`'s limits from the `ingestion` parameters, which set them wherever a file is decoded."""
    return {"min_side": ingestion["min_side_px"], "max_pixels": ingestion["max_pixels"]}


def decode_rgb(data: bytes, *, min_side: int = 32, max_pixels: int = 40_000_000) -> DecodedImage:
    """Decode every pixel of an image file's bytes into RGB, or raise `UnusableImage` saying why.

    The format is read from the content, never the file name, so PNG bytes under a `.jpg` name decode.
    The pixel count is checked from the header before any pixel is decompressed, so a decompression
    bomb costs nothing. Grayscale, palette, CMYK, 16-bit and alpha images become RGB (alpha over white,
    the colour of an empty slide), EXIF orientation is applied, and multi-frame files give their first frame.
    """
    if not data:
        raise UnusableImage(EMPTY, "0 bytes")
    with warnings.catch_warnings():
        # Our own pixel limit below is the one that applies; Pillow's warning would only add noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise UnusableImage(NOT_AN_IMAGE, "no known image format in its content") from None
        except Image.DecompressionBombError as error:
            raise UnusableImage(DECOMPRESSION_BOMB, str(error)) from None
        except Exception as error:  # a malformed header can raise anything a Pillow plugin knows
            raise UnusableImage(_decode_failure(error), f"header: {error}") from None
        width, height = image.size
        if width * height > max_pixels:
            raise UnusableImage(
                DECOMPRESSION_BOMB, f"{width}x{height} = {width * height} pixels, limit {max_pixels}"
            )
        file_format, file_mode = image.format or "unknown", image.mode
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
        except Exception as error:  # decoders raise OSError, SyntaxError, struct.error, ValueError...
            raise UnusableImage(_decode_failure(error), f"{file_format}: {error}") from None
    if min(width, height) < min_side:
        raise UnusableImage(TOO_SMALL, f"{width}x{height} px, minimum {min_side} px a side")
    return DecodedImage(rgb=_to_rgb(image), file_format=file_format, file_mode=file_mode)


def _decode_failure(error: Exception) -> str:
    """Tell a file cut short from one whose data is corrupt, by what the decoder said."""
    return TRUNCATED if isinstance(error, EOFError) or "truncat" in str(error).lower() else UNDECODABLE


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to a contiguous RGB uint8 array."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Wide grey levels: stretch to 8 bits instead of letting Pillow clip everything above 255.
        grey = np.asarray(image, dtype=np.float64)
        low, high = float(grey.min()), float(grey.max())
        scaled = (grey - low) * (255.0 / (high - low)) if high > low else np.zeros_like(grey)
        return np.ascontiguousarray(np.repeat(scaled.round().astype(np.uint8)[..., None], 3, axis=2))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        slide = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(slide, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def perceptual_hash(rgb: np.ndarray) -> int:
    """64-bit DCT perceptual hash (pHash): survives re-encoding, resizing and mild colour shifts.

    The image is reduced to 32x32 grey, and each of the 8x8 lowest DCT frequencies becomes one bit:
    above or below their median. Two images whose hashes differ in few bits look alike.
    """
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA)
    low_frequencies = cv2.dct(small)[:8, :8].flatten()
    bits = low_frequencies > np.median(low_frequencies)
    return int(np.packbits(bits).view(">u8")[0])


def near_pairs(hashes: np.ndarray, max_bits: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of 64-bit hashes that differ in at most `max_bits` bits.

    Compared a block of rows at a time, so memory stays bounded at block x n, not n x n.
    """
    bits = np.unpackbits(hashes.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1).astype(np.float32)
    firsts, seconds = [], []
    for start in range(0, len(bits), block):
        rows = bits[start : start + block]
        # Bits that differ: ones here and zeros there, plus zeros here and ones there.
        distances = rows @ (1 - bits).T + (1 - rows) @ bits.T
        first, second = np.nonzero(distances <= max_bits)
        first += start
        keep = first < second
        firsts.append(first[keep])
        seconds.append(second[keep])
    return (np.concatenate(firsts), np.concatenate(seconds)) if firsts else (np.array([], int),) * 2


# Reasons a file is quarantined for where it is or what it is, before its bytes are looked at.
OUTSIDE_CLASS_FOLDER = "outside a known class folder"
HIDDEN_OR_SYSTEM = "hidden or system file"
SYMBOLIC_LINK = "symbolic link (not followed)"
NOT_REGULAR_FILE = "not a regular file"
UNREADABLE = "unreadable file"
FILE_TOO_LARGE = "file too large"
# Names operating systems and archivers leave behind; never smear images.
SYSTEM_FILE_NAMES = frozenset({"Thumbs.db", "desktop.ini", "Icon\r", "__MACOSX"})

#: What `inspect_file` says about any file: its path, its verdict, and what its bytes hold.
FILE_VERDICT_COLUMNS = [
    "path", "status", "reason", "detail", "sha256", "size_bytes",
    "width", "height", "file_format", "file_mode", "phash",
]  # fmt: skip


def walk_without_following_links(root: Path) -> Iterator[PurePosixPath]:
    """Yield every non-directory entry below root, relative, including links to folders (not entered)
    and empty folders named like files (`scan.jpg/`), which a user would take for an image and expect
    a row for (the verdict: not a regular file)."""
    for folder, subfolders, files in os.walk(root, followlinks=False):
        here = Path(folder).relative_to(root)
        linked_folders = [name for name in subfolders if (Path(folder) / name).is_symlink()]
        named_like_files = [
            name
            for name in subfolders
            if Path(name).suffix and name not in linked_folders and not any((Path(folder) / name).iterdir())
        ]
        for name in [*files, *linked_folders, *named_like_files]:
            yield PurePosixPath((here / name).as_posix())


@dataclass(frozen=True)
class Placement:
    """What a file's listing entry alone says (`judge_placement`): the reason it is quarantined before
    any byte is read (None if nothing yet), its size, and whether its bytes may be read at all."""

    reason: str | None
    detail: str | None
    size_bytes: int
    readable: bool


def judge_placement(
    root: Path, relative: PurePosixPath, limits: dict[str, Any], known_place: bool = True
) -> Placement:
    """The verdict on a file from where and what it is, without reading it: a link (never followed), a
    fifo or device (never read), a hidden or system file, a file outside a known place (ingestion's
    class-folder rule: pass `known_place=False`), or one over `limits["max_file_mb"]`.

    Only a regular file within the size limit is `readable`; a hidden or misplaced one is still read
    for its hash, and quarantined whatever its bytes hold.
    """
    info = (root / relative).lstat()
    hidden = any(part.startswith(".") or part in SYSTEM_FILE_NAMES for part in relative.parts)
    reason, detail = None, None
    if stat.S_ISLNK(info.st_mode):
        reason, detail = SYMBOLIC_LINK, f"points to {(root / relative).readlink()}"
    elif not stat.S_ISREG(info.st_mode):
        reason, detail = NOT_REGULAR_FILE, stat.filemode(info.st_mode)
    elif hidden:
        reason = HIDDEN_OR_SYSTEM
    elif not known_place:
        reason, detail = OUTSIDE_CLASS_FOLDER, f"expected {ORIGINAL_DIR}|{SEGMENTED_DIR}/<class>/<file>"
    elif info.st_size > limits["max_file_mb"] * 2**20:
        reason, detail = FILE_TOO_LARGE, f"{info.st_size} bytes, limit {limits['max_file_mb']} MiB"
    # Reading a fifo or device would block or never end, and a link is never followed.
    readable = stat.S_ISREG(info.st_mode) and reason != FILE_TOO_LARGE
    return Placement(reason, detail, info.st_size, readable)


def inspect_file(
    root: Path, relative: PurePosixPath, limits: dict[str, Any], known_place: bool = True
) -> dict[str, Any]:
    """One file's verdict: `status`, `reason` and `detail`, its hash, size and, when usable, its image facts.

    `judge_placement` first; a file it lets through is decoded in full by `decode_rgb` with
    `limits["min_side_px"]` and `limits["max_pixels"]`. Keys are `FILE_VERDICT_COLUMNS` (those that do
    not apply are left out).
    """
    placement = judge_placement(root, relative, limits, known_place)
    record: dict[str, Any] = {"path": str(relative), "size_bytes": placement.size_bytes}
    reason, detail = placement.reason, placement.detail
    if placement.readable:
        try:
            data = read_regular_file(root, relative)
        except UnusableImage as changed:  # swapped for a link or a fifo since it was listed
            return {**record, "status": QUARANTINED, "reason": changed.reason, "detail": changed.detail}
        except OSError as error:
            return {**record, "status": QUARANTINED, "reason": UNREADABLE, "detail": str(error)}
        record["sha256"] = hashlib.sha256(data).hexdigest()
        if reason is None:
            try:
                image = decode_rgb(data, **decode_limits(limits))
            except UnusableImage as unusable:
                reason, detail = unusable.reason, unusable.detail
            else:
                height, width = image.rgb.shape[:2]
                record.update(
                    width=width,
                    height=height,
                    file_format=image.file_format,
                    file_mode=image.file_mode,
                    phash=f"{perceptual_hash(image.rgb):016x}",
                )
    status = OK if reason is None else QUARANTINED
    return {**record, "status": status, "reason": reason, "detail": detail}


def read_regular_file(root: Path, relative: PurePosixPath | str) -> bytes:
    """The bytes of the regular file at `root/relative`, or `UnusableImage` if it, or a folder on the way
    to it below `root`, is a link (never followed) or it is not a regular file (a fifo is never read).

    Opened with O_NOFOLLOW and checked on the open descriptor, so a file swapped for a link between a
    listing and this read is refused, not followed. Other failures are the `OSError` they are.
    """
    relative = PurePosixPath(relative)
    for depth in range(1, len(relative.parts)):
        folder = root.joinpath(*relative.parts[:depth])
        if folder.is_symlink():
            raise UnusableImage(SYMBOLIC_LINK, f"{relative.parts[depth - 1]}/ points to {folder.readlink()}")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        descriptor = os.open(root / relative, flags)
    except OSError as error:
        if (root / relative).is_symlink():
            raise UnusableImage(SYMBOLIC_LINK, f"points to {(root / relative).readlink()}") from None
        raise error
    with os.fdopen(descriptor, "rb") as file:
        mode = os.fstat(file.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise UnusableImage(NOT_REGULAR_FILE, stat.filemode(mode))
        return file.read()


@dataclass(frozen=True)
class ImageFolder:
    """A folder of image files as the pipelines read it: listed and read without following links, each
    file judged by `inspect_file` and decoded by `decode_rgb` with the `ingestion` parameters' limits.

    What the catalog's raw-image datasets (`raw_images`, `inference_images`) load; a node keeps only
    its paths relative to `root`, so the manifest means the same wherever the folder is.
    """

    root: Path

    def files(self) -> list[PurePosixPath]:
        """Every entry below the folder, relative and sorted (`walk_without_following_links`)."""
        return sorted(walk_without_following_links(self.root))

    def inspect(
        self, relative: PurePosixPath, limits: dict[str, Any], known_place: bool = True
    ) -> dict[str, Any]:
        """One file's verdict (`inspect_file`)."""
        return inspect_file(self.root, relative, limits, known_place)

    def placement(self, relative: PurePosixPath, limits: dict[str, Any]) -> Placement:
        """What one file's listing entry says before its bytes are read (`judge_placement`)."""
        return judge_placement(self.root, relative, limits)

    def read_rgb(self, relative: PurePosixPath | str, limits: dict[str, Any]) -> np.ndarray:
        """An image's pixels as RGB uint8, through the same gate and limits as its verdict (the file may
        have changed since): `UnusableImage` if it no longer passes, `OSError` if it cannot be read."""
        return decode_rgb(read_regular_file(self.root, relative), **decode_limits(limits)).rgb

    def read_each(
        self,
        paths: Iterable[PurePosixPath | str],
        limits: dict[str, Any],
        what: str,
        keep: Callable[[np.ndarray], Any] = lambda rgb: rgb,
    ) -> list:
        """`keep` of each image at `paths` (`read_rgb`), read one at a time so only what is kept stays
        in memory (e.g. a whole split's colour statistics), with its progress logged as `what`."""
        paths = list(paths)
        progress = Progress(logger, what, len(paths))
        kept = []
        for path in paths:
            kept.append(keep(self.read_rgb(path, limits)))
            progress.advance()
        return kept
