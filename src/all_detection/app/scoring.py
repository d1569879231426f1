"""The page's answers, made by the inference pipeline's own nodes: an uploaded image is checked by the
same gate (`scan_inference_folder`) and scored by `score_images` with the project's batch size, so a
file gets the row `kedro run --pipeline inference` would give it, to the last digit. Around that row the
page adds the evidence (Grad-CAM, the blast mask) and the caveat (the colour distance)."""

from __future__ import annotations

import base64
import logging
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from all_detection.app.loading import PageModel
from all_detection.gradcam import gradcam_heatmaps
from all_detection.image_io import UNREADABLE, ImageFolder, UnusableImage
from all_detection.layout import CLASSES, DETECTION_POSITIVE, OK, PREDICTION_COLUMNS, PROBABILITY_COLUMNS
from all_detection.metrics import bootstrap_intervals, reported
from all_detection.pipelines.inference.nodes import scan_inference_folder, score_images
from all_detection.segmentation import model_input
from all_detection.shortcuts import colour_distance, colour_signature

logger = logging.getLogger(__name__)

DISCLAIMER = "For research, not diagnosis."
#: Side of the pictures the page shows, in pixels.
SHOWN_PX = 224
#: A blast mask covering less of the image than this is reported as empty: on the dev half, half of
#: the Pro smears' masks (and of the dataset's own Segmented copies) cover under 0.1%.
EMPTY_MASK_AREA = 0.001
#: What a quarantine reason means to a person, beside the reason itself.
EXPLAINED = {
    "not an image": "The file holds no image the gate knows (JPEG, PNG, BMP, TIFF...).",
    "truncated image": "The image file is cut short: it was not fully copied or downloaded.",
    "undecodable image": "The image data is corrupt and cannot be decoded.",
    "decompression bomb": "The image declares more pixels than the limit (ingestion.max_pixels).",
    "empty file": "The file is empty.",
    "too small": "The image is smaller than the minimum side (ingestion.min_side_px).",
    "file too large": "The file is larger than the limit (ingestion.max_file_mb).",
    "hidden or system file": "Hidden and system files (.name, Thumbs.db) are never scored.",
    "symbolic link (not followed)": "Links are never followed.",
}


def safe_relative_path(name: str) -> PurePosixPath:
    """An uploaded file's name as a path inside the upload's folder: separators of either kind, no
    absolute path, no `..`, no empty parts; `ValueError` for a name with nothing left."""
    parts = [part for part in name.replace("\\", "/").split("/") if part not in ("", ".", "..")]
    parts = [part.replace("\x00", "") for part in parts]
    if not parts or not all(parts):
        raise ValueError(f"no usable file name in {name!r}")
    return PurePosixPath(*parts)


def score_upload(model: PageModel, folder: Path, name: str, data: bytes) -> dict[str, Any]:
    """One uploaded image's answer: its predictions row (the inference pipeline's), and for a usable
    image the detection answer, Grad-CAM and blast-mask pictures and its colour distance."""
    relative = PurePosixPath(safe_relative_path(name).name)
    (folder / relative).write_bytes(data)
    images = ImageFolder(folder)
    files = scan_inference_folder(images, model.ingestion)
    predictions = score_images(
        files, images, model.network, {"batch_size": model.batch_size}, model.preprocessing, model.ingestion
    )
    row = predictions.iloc[0]
    answer = _row_answer(row, files.iloc[0].get("detail"))
    answer["name"] = name
    if answer["status"] != OK:
        return answer
    try:
        rgb = images.read_rgb(relative, model.ingestion)
    except (UnusableImage, OSError) as error:  # changed since it was scored: say so, as the pipeline would
        return answer | {"status": "quarantined", "reason": getattr(error, "reason", UNREADABLE)}
    return answer | evidence(model, rgb, CLASSES.index(str(row["predicted"])))


def _row_answer(row: pd.Series, detail: Any = None) -> dict[str, Any]:
    """A predictions row as the page's JSON: status, reason (with what it means), predicted stage, the
    class probabilities and the detection answer (benign, or malignant: Early, Pre or Pro)."""
    answer: dict[str, Any] = {"status": str(row["status"]), "disclaimer": DISCLAIMER}
    if row["status"] != OK:
        reason = str(row["reason"])
        return answer | {
            "reason": reason,
            "message": EXPLAINED.get(reason, "The file cannot be used as an image."),
            "detail": None if pd.isna(detail) else str(detail),
        }
    columns = zip(CLASSES, PROBABILITY_COLUMNS, strict=True)
    probabilities = {label: float(row[column]) for label, column in columns}
    malignant = 1.0 - probabilities[CLASSES[0]]
    return answer | {
        "predicted": str(row["predicted"]),
        "probabilities": probabilities,
        "detection": {
            "answer": "malignant" if str(row["predicted"]) != CLASSES[0] else "benign",
            "malignant_probability": malignant,
            "positive": DETECTION_POSITIVE,
        },
    }


def evidence(model: PageModel, rgb: np.ndarray, class_index: int) -> dict[str, Any]:
    """What the page shows beside the answer: the image, Grad-CAM for the predicted class over it, the
    project's blast mask over it, and how far its colour lies from the training images'."""
    prepared, mask = model_input(rgb, model.preprocessing)
    heatmap = gradcam_heatmaps(model.network, prepared[None], np.array([class_index]), batch_size=1)[0]
    shown = cv2.resize(rgb, (SHOWN_PX, SHOWN_PX), interpolation=cv2.INTER_AREA)
    heat = cv2.resize(heatmap.astype(np.float32), (SHOWN_PX, SHOWN_PX), interpolation=cv2.INTER_CUBIC)
    coloured = cv2.applyColorMap(np.uint8(255 * np.clip(heat, 0, 1)), cv2.COLORMAP_JET)[..., ::-1]
    overlay = (0.55 * shown + 0.45 * coloured).round().astype(np.uint8)
    outlined = shown.copy()
    small_mask = cv2.resize(mask.astype(np.uint8), (SHOWN_PX, SHOWN_PX), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(small_mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(outlined, contours, -1, (0, 255, 0), 1)
    return {
        "pictures": {"image": _png(shown), "gradcam": _png(overlay), "blast_mask": _png(outlined)},
        "blast_mask_area": float(mask.mean()),
        "blast_mask_message": blast_mask_message(float(mask.mean())),
        "colour": colour_check(model, rgb),
    }


def blast_mask_message(area: float) -> str:
    """The blast mask's caption: how much of the image it covers, and what an empty one means."""
    if area < EMPTY_MASK_AREA:
        return (
            "Blast mask: no stained cells found. The HSV band (the dataset authors' recipe) misses the "
            "pink-lilac blasts of most Pro smears, so an empty mask says nothing about the cells."
        )
    return f"Blast mask (HSV, green outline): {100 * area:.1f}% of the image."


def colour_check(model: PageModel, rgb: np.ndarray) -> dict[str, Any]:
    """The image's colour distance from the model's training images and the plain warning when it lies
    beyond the range of the images it learnt from (the colour range registered with the model)."""
    colour_range = model.colour_range
    if not colour_range or colour_range.get("limit") is None:
        return {
            "available": False,
            "message": "This model carries no colour range of its training images (registered by an "
            "older version), so the page cannot say whether this image's colour is familiar to it.",
        }
    distance = float(colour_distance(colour_range, colour_signature(rgb, colour_range["image_size"]))[0])
    limit = float(colour_range["limit"])
    share = round(100 * colour_range["quantile"])
    within = distance <= limit
    message = (
        f"Colour within the training images' range (distance {distance:.1f}; {share}% of the training "
        f"images lie within {limit:.1f})."
        if within
        else f"Warning: this image's colour is unlike the training images' (distance {distance:.1f}, "
        f"beyond {limit:.1f}, within which {share}% of them lie). The model was never shown a "
        "smear stained or photographed like this; on this dataset colour alone separates the classes, "
        "so its answer may follow the colour, not the cells."
    )
    return {"available": True, "distance": distance, "limit": limit, "within": within, "message": message}


def _png(rgb: np.ndarray) -> str:
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode()


# --- batches: a folder or a zip of images, scored as `kedro run --pipeline inference` scores it -------


def extract_zip(archive: Path, folder: Path, max_files: int, max_file_bytes: int) -> int:
    """The zip's files written under `folder` at their (made safe) paths; returns how many.

    Each member is copied at most `max_file_bytes + 1` bytes, so an oversized or bomb member is stored
    just over the limit, where the gate quarantines it as too large; links become links (never
    followed, quarantined by the gate); more than `max_files` members is a `ValueError`.
    """
    count = 0
    with zipfile.ZipFile(archive) as opened:
        members = [member for member in opened.infolist() if not member.is_dir()]
        if len(members) > max_files:
            raise ValueError(f"the zip holds {len(members)} files, more than the limit of {max_files}")
        for member in members:
            target = folder / safe_relative_path(member.filename)
            if target.exists() or target.is_symlink():
                continue  # a second member of the same name: the first is kept, as unzip would ask
            target.parent.mkdir(parents=True, exist_ok=True)
            if stat.S_ISLNK(member.external_attr >> 16):
                target.symlink_to(opened.read(member)[:4096].decode(errors="replace"))
            else:
                with opened.open(member) as source, target.open("wb") as sink:
                    sink.write(source.read(max_file_bytes + 1))
            count += 1
    return count


def single_top_folder(folder: Path) -> Path:
    """The folder a picked or zipped folder's files sit in: a lone top folder is the one scored, so the
    table's paths read as they would with `inference.input_dir` set to it."""
    entries = [entry for entry in folder.iterdir() if entry.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return folder


def folder_slices(files: pd.DataFrame, batch_size: int) -> list[np.ndarray]:
    """Row numbers of `files` (`scan_inference_folder`'s table) cut so that each slice holds
    `batch_size` usable images (the last fewer): scored one slice at a time, the model sees the very
    batches `score_images` forms for the whole folder, so the table equals the pipeline's."""
    usable = np.flatnonzero(files["status"].to_numpy() == OK)
    cuts = [int(usable[start]) for start in range(0, len(usable), batch_size)][1:]
    return np.split(np.arange(len(files)), cuts) if len(files) else []


def start_batch_scoring(model: PageModel) -> None:
    """Forget the batch model's compiled predict step, as a fresh `kedro run --pipeline inference`
    starts without one. The float32 sums of a batch's forward pass depend on the shapes its step was
    compiled for (TensorFlow compiles one step per batch shape, then a shape-generic one once a
    second shape is seen), so a table equals the pipeline's to the last digit only when its batches
    meet the step as the pipeline's do: from fresh, in the same order. Batches are scored one at a
    time."""
    model.batch_network.make_predict_function(force=True)


def score_slice(model: PageModel, images: ImageFolder, files: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """The predictions rows of one of `folder_slices`."""
    part = files.iloc[rows].reset_index(drop=True)
    inference = {"batch_size": model.batch_size}
    return score_images(part, images, model.batch_network, inference, model.preprocessing, model.ingestion)


def joined(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Slices' predictions rows as one table, in the inference pipeline's columns."""
    if not parts:
        return pd.DataFrame(columns=PREDICTION_COLUMNS)
    return pd.concat(parts, ignore_index=True)[PREDICTION_COLUMNS]


def folder_label(path: str) -> str | None:
    """The class a file's folders name (`Benign/x.jpg`, `Original/Pro/x.jpg`, `lab/Early/x.png`): the
    nearest folder named like a class, or None."""
    for part in reversed(PurePosixPath(path).parts[:-1]):
        if part in CLASSES:
            return part
    return None


def labelled_summary(predictions: pd.DataFrame, seed: int = 42) -> dict[str, Any]:
    """Counts of the table, and where the images sit in class folders, their accuracy with its 95%
    bootstrap interval, the confusion matrix and the detection (benign against malignant) accuracy."""
    scored = predictions[predictions["status"] == OK]
    summary: dict[str, Any] = {
        "files": len(predictions),
        "scored": len(scored),
        "quarantined": int((predictions["status"] != OK).sum()),
        "predicted": {label: int((scored["predicted"] == label).sum()) for label in CLASSES},
    }
    labels = scored["path"].map(folder_label)
    labelled = scored[labels.notna()]
    summary["labelled"] = len(labelled)
    if labelled.empty:
        return summary
    truth = np.array([CLASSES.index(label) for label in labels[labels.notna()]])
    predicted = np.array([CLASSES.index(label) for label in labelled["predicted"]])
    interval = bootstrap_intervals(truth, predicted, 1000, 0.95, seed)["accuracy"]
    summary |= {
        "accuracy": reported(np.mean(truth == predicted)),
        "accuracy_interval": interval,
        "detection_accuracy": reported(np.mean((truth > 0) == (predicted > 0))),
        "confusion_matrix": {
            "labels": list(CLASSES),
            "counts": confusion_matrix(truth, predicted, labels=range(len(CLASSES))).tolist(),
        },
    }
    return summary


def remove_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
