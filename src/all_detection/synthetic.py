"""Synthetic blood smears shaped like the ALL dataset, for tests and the demo when real images cannot ship."""

from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image

from all_detection.layout import CLASSES, FILE_PREFIXES, ORIGINAL_DIR, SEGMENTED_DIR
from all_detection.segmentation import AUTHORS_RECIPE, blast_mask

_SUBPIXEL_BITS = 4  # cv2 draws at fixed-point coordinates; sub-pixel precision keeps small images smooth


class _Phenotype(NamedTuple):
    """How one class's lymphoid cells look; ranges overlap between classes so no one cue gives it away."""

    cell_radius: tuple[float, float]  # in red-cell radii
    nucleus_ratio: tuple[float, float]  # nucleus radius over cell radius
    wobble: tuple[float, float]  # irregularity of the nuclear outline
    cleft: float  # probability of an indented or clefted nucleus
    grain: float  # chromatin grain size, in pixels at 224
    clumping: float  # chromatin contrast
    depth: tuple[float, float]  # nuclear stain density
    nucleoli: float  # probability per cell
    vacuoles: float  # probability per cell
    hue: float  # stain hue in degrees; the authors' threshold keeps about 241-265
    saturation: tuple[float, float]  # of the nucleus at unit density
    warmth: float  # mean yellow cast of the background


_PHENOTYPES: dict[str, _Phenotype] = {
    "Benign": _Phenotype((1.1, 1.5), (0.84, 0.93), (0.0, 0.04), 0.05, 1.6, 0.4, (1.05, 1.3), 0.0, 0.05,
                         256.0, (0.4, 0.55), 0.0),
    "Early": _Phenotype((1.35, 1.95), (0.78, 0.9), (0.02, 0.07), 0.1, 0.6, 0.15, (0.95, 1.1), 0.4, 0.1,
                        255.0, (0.45, 0.56), 0.0),
    "Pre": _Phenotype((1.5, 2.15), (0.68, 0.84), (0.05, 0.12), 0.35, 0.8, 0.2, (0.9, 1.05), 0.3, 0.45,
                      255.0, (0.4, 0.54), 0.01),
    "Pro": _Phenotype((1.6, 2.3), (0.62, 0.8), (0.1, 0.2), 0.7, 0.6, 0.12, (0.8, 1.0), 0.5, 0.3,
                      272.0, (0.3, 0.46), 0.04),
}  # fmt: skip


def _absorbance(hue: float, saturation: float, value: float) -> np.ndarray:
    """Optical density per RGB channel of a stain that looks HSV (hue, s, v) at unit density on white."""
    rgb = cv2.cvtColor(np.float32([[[hue % 360, saturation, value]]]), cv2.COLOR_HSV2RGB)[0, 0]
    return -np.log(np.clip(rgb, 1e-3, 1.0))


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian noise blurred to a grain of `sigma` pixels, rescaled to unit standard deviation."""
    noise = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), max(sigma, 0.3))
    return noise / (noise.std() + 1e-6)


def _polar(radius: float, rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    return radius * np.array([np.cos(angle), np.sin(angle)])


def _outline(
    centre: np.ndarray, radius: float, wobble: float, rng: np.random.Generator, cleft: float = 0.0
) -> np.ndarray:
    """Polygon of a roundish cell or nucleus: an ellipse whose radius wobbles with a few low harmonics and,
    when `cleft` > 0, a notch of that relative depth (the cleft of a pro-B nucleus)."""
    theta = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    harmonics = np.arange(2, 6)[:, None]
    amplitude = wobble * rng.uniform(0.3, 1.0, (4, 1)) / np.sqrt(harmonics)
    rho = radius * (1 + (amplitude * np.cos(harmonics * theta + rng.uniform(0, 2 * np.pi, (4, 1)))).sum(0))
    notch_angle = np.angle(np.exp(1j * (theta - rng.uniform(0, 2 * np.pi))))
    rho *= 1 - cleft * np.exp(-((notch_angle / 0.35) ** 2))
    stretch, tilt = rng.uniform(1.0, 1.12), rng.uniform(0, np.pi)
    x, y = rho * np.cos(theta) * stretch, rho * np.sin(theta) / stretch
    return centre + np.stack([x * np.cos(tilt) - y * np.sin(tilt), x * np.sin(tilt) + y * np.cos(tilt)], 1)


def _fill_polygon(canvas: np.ndarray, polygon: np.ndarray, value: float = 1.0) -> None:
    points = np.round(polygon * (1 << _SUBPIXEL_BITS)).astype(np.int32)
    cv2.fillPoly(canvas, [points], value, cv2.LINE_8, _SUBPIXEL_BITS)


def _fill_ellipse(
    canvas: np.ndarray, centre: np.ndarray, axes: tuple[float, float], value: float, angle: float = 0.0
) -> None:
    def fixed(a: float, b: float) -> tuple[int, int]:
        return round(a * (1 << _SUBPIXEL_BITS)), round(b * (1 << _SUBPIXEL_BITS))

    cv2.ellipse(canvas, fixed(*centre), fixed(*axes), angle, 0, 360, value, -1, cv2.LINE_8, _SUBPIXEL_BITS)


def _red_cells(size: int, red_radius: float, rng: np.random.Generator) -> np.ndarray:
    """Stain density of the red cells: discs with a soft paler centre, scattered or stacked in rouleaux."""
    count = int(rng.uniform(0.35, 1.1) * size**2 / (np.pi * red_radius**2))
    centres = rng.uniform(-red_radius, size + red_radius, (count, 2))
    chained = int(count * rng.uniform(0, 0.7))  # rouleaux: random walks of overlapping discs
    heading = rng.normal(0, 0.7, chained).cumsum() + rng.uniform(0, 2 * np.pi)
    steps = rng.uniform(0.7, 1.5, (chained, 1)) * red_radius * np.stack([np.cos(heading), np.sin(heading)], 1)
    first = np.arange(chained) * ((rng.random(chained) < 0.2) | (np.arange(chained) == 0))
    anchor = np.maximum.accumulate(first)  # each chain starts from a scattered disc
    travelled = steps.cumsum(0)
    centres[:chained] = centres[anchor] + travelled - travelled[anchor]
    axes = (
        red_radius
        * rng.uniform(0.85, 1.12, (count, 1))
        * np.stack([np.ones(count), rng.uniform(0.82, 1, count)], 1)
    )
    discs = np.zeros((size, size), np.float32)
    pallor = np.zeros((size, size), np.float32)
    depth, pallor_size = rng.uniform(0.4, 0.95), rng.uniform(0.45, 0.65)
    for centre, disc, angle, ink in zip(
        centres, axes, rng.uniform(0, 180, count), rng.uniform(0.85, 1.1, count), strict=True
    ):
        _fill_ellipse(discs, centre, disc, ink, angle)
        _fill_ellipse(pallor, centre, disc, 0.0, angle)  # a disc on top hides the pale centre beneath it
        _fill_ellipse(pallor, centre, disc * pallor_size, depth, angle)
    # the biconcave disc thins smoothly towards its middle, so its pallor has no edge
    return discs * (1 - cv2.GaussianBlur(pallor, (0, 0), 0.15 * red_radius))


def _lymphoid_cells(
    look: _Phenotype, size: int, red_radius: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stain densities of cytoplasm and nuclei of 1-6 lymphoid cells, and the boolean mask of the cells."""
    cells, nuclei = np.zeros((size, size), np.float32), np.zeros((size, size), np.float32)
    clearing = np.zeros((size, size), np.float32)  # nucleoli and vacuoles take up less stain
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(rng.integers(1, 7)):
        radius = red_radius * rng.uniform(*look.cell_radius)
        for _attempt in range(20):  # cells may touch but rarely pile up
            centre = rng.uniform(0, size, 2)
            if all(np.hypot(*(centre - c)) > 0.9 * (radius + r) for c, r in placed):
                break
        placed.append((centre, radius))
        _fill_polygon(cells, _outline(centre, radius, rng.uniform(0, 0.04), rng))
        nucleus_radius = radius * rng.uniform(*look.nucleus_ratio)
        nucleus_centre = centre + _polar((radius - nucleus_radius) * rng.uniform(0, 0.8), rng)
        cleft = rng.uniform(0.15, 0.45) if rng.random() < look.cleft else 0.0
        _fill_polygon(nuclei, _outline(nucleus_centre, nucleus_radius, rng.uniform(*look.wobble), rng, cleft))
        for _nucleolus in range(rng.integers(1, 3) if rng.random() < look.nucleoli else 0):
            spot = nucleus_centre + rng.normal(0, 0.3 * nucleus_radius, 2)
            _fill_ellipse(clearing, spot, (0.13 * nucleus_radius,) * 2, 0.35)
        for _vacuole in range(rng.integers(1, 5) if rng.random() < look.vacuoles else 0):
            spot = centre + _polar(rng.uniform(0.3, 0.85) * radius, rng)
            _fill_ellipse(clearing, spot, (rng.uniform(0.05, 0.11) * radius,) * 2, 0.6)
    nuclei *= cells  # a nucleus never pokes out of its cell
    chromatin = np.clip(1 + look.clumping * _smooth_noise(rng, size, look.grain * size / 224), 0.35, 1.8)
    nucleus = nuclei * rng.uniform(*look.depth) * chromatin * (1 - clearing)
    cytoplasm = (cells - nuclei) * rng.uniform(0.85, 1.1) * (1 - clearing)
    return cytoplasm, nucleus, cells > 0


def _platelets(size: int, rng: np.random.Generator) -> np.ndarray:
    """Stain density of a few platelets, specks that take the nuclear stain but are no lymphoid cells."""
    specks = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(0, 6)):
        radius = rng.uniform(0.7, 1.5) * size / 224
        _fill_ellipse(specks, rng.uniform(0, size, 2), (radius, radius), rng.uniform(0.4, 0.9))
    return specks


def _light_field(size: int, warmth: float, rng: np.random.Generator) -> np.ndarray:
    """Brightfield light in [0, 1]: near white, tinted yellow (warmth > 0) or blue, softly vignetted."""
    tint = np.clip(np.array([0.985, 0.998, 0.995]) + warmth * np.array([0.3, 0.1, -1.0]), 0, 1)
    yy, xx = np.mgrid[0:size, 0:size] / size - rng.uniform(0.3, 0.7, (2, 1, 1))
    return tint * (1 - rng.uniform(0, 0.08) * (xx**2 + yy**2))[..., None]


def _with_scale_label(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image with the microscope's scale-bar label burnt in: a small white box, bottom right."""
    labelled, size, s = image.copy(), image.shape[0], image.shape[0] / 224
    x0, x1, y0, y1 = size - round(29 * s), size - round(6 * s), size - round(18 * s), size - round(7 * s)
    labelled[y0:y1, x0:x1] = 250
    ink = (40, 40, 40) if rng.random() < 0.6 else (200, 40, 50)
    cv2.putText(
        labelled, "20um", (x0 + round(6 * s), y1 - round(4 * s)), cv2.FONT_HERSHEY_PLAIN, 0.3 * s, ink
    )
    cv2.line(labelled, (x0 + round(s), y1 - round(2 * s)), (x1 - round(s), y1 - round(2 * s)), ink)
    return labelled


def render_smear(label: str, rng: np.random.Generator, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """Draw one RGB uint8 smear of class `label` (in `CLASSES`) and the boolean mask of its lymphoid cells.

    Stain densities combine by Beer-Lambert on a tinted light field, so overlaps darken as in a real smear.
    Stain hue and strength, red-cell density, focus and noise vary per image; every length scales with `size`.
    """
    look, scale = _PHENOTYPES[label], size / 224
    red_radius = 10.5 * scale * rng.uniform(0.9, 1.1)
    cytoplasm, nucleus, cell_mask = _lymphoid_cells(look, size, red_radius, rng)
    red_cells = _red_cells(size, red_radius, rng) * ~cell_mask  # lymphoid cells lie on top of red cells
    if rng.random() < 0.4:  # red cells are often out of the lymphoid cells' focal plane
        red_cells = cv2.GaussianBlur(red_cells, (0, 0), rng.uniform(0.5, 2.0) * scale + 0.1)
    hue = look.hue + rng.normal(0, 5)  # stain batches differ; the tails of Pro and the rest meet
    nucleus_stain = _absorbance(hue, rng.uniform(*look.saturation), rng.uniform(0.97, 1.0))
    cytoplasm_stain = _absorbance(hue + rng.uniform(-3, 6), 0.55 * rng.uniform(*look.saturation), 0.98)
    red_hue = rng.uniform(212, 248)
    # bluer red cells may be more saturated: the authors' threshold only sees hues from about 241 degrees
    red_stain = _absorbance(
        red_hue, rng.uniform(0.12, 0.35 if red_hue < 234 else 0.16), rng.uniform(0.8, 0.92)
    )
    density = (
        red_cells[..., None] * red_stain
        + cytoplasm[..., None] * cytoplasm_stain
        + np.maximum(nucleus, _platelets(size, rng))[..., None] * nucleus_stain
    )
    light = _light_field(size, rng.normal(look.warmth, 0.025), rng)
    focus = rng.uniform(0.7, 1.5) * scale
    image = cv2.GaussianBlur((255 * light * np.exp(-density)).astype(np.float32), (0, 0), focus)
    image = image + rng.normal(0, rng.uniform(1, 3), image.shape)
    return _with_scale_label(np.clip(image, 0, 255).round().astype(np.uint8), rng), cell_mask


def segment_like_dataset(image: np.ndarray, cell_mask: np.ndarray) -> np.ndarray:
    """The dataset-style Segmented copy of an RGB image: red and blue swapped inside `cell_mask`, black
    elsewhere, as in the authors' saved files. Given the ground-truth mask it is an ideal copy; given the
    authors' threshold, a faithful one, which like the real Pro files is nearly empty for pink cells."""
    return np.where(cell_mask[..., None], image[..., ::-1], 0).astype(np.uint8)


def synthetic_files(
    per_class: int = 40, image_size: int = 224, seed: int = 42, jpeg_quality: int = 90
) -> dict[str, bytes]:
    """`per_class` smears per class as JPEG files in the Kaggle layout, `{"Original/<class>/<prefix>-NNN.jpg":
    bytes}`, each with a Segmented twin made by the authors' threshold. Every image draws from its own
    generator seeded by (seed, class, number), so the same arguments give the same bytes."""
    files = {}
    for class_index, label in enumerate(CLASSES):
        for number in range(1, per_class + 1):
            image, _ = render_smear(label, np.random.default_rng([seed, class_index, number]), image_size)
            segmented = segment_like_dataset(image, blast_mask(image, AUTHORS_RECIPE))
            name = f"{FILE_PREFIXES[label]}-{number:03d}.jpg"
            files[f"{ORIGINAL_DIR}/{label}/{name}"] = _jpeg(image, jpeg_quality)
            files[f"{SEGMENTED_DIR}/{label}/{name}"] = _jpeg(segmented, jpeg_quality)
    return files


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    encoded = io.BytesIO()
    Image.fromarray(rgb).save(encoded, format="JPEG", quality=quality)
    return encoded.getvalue()


def write_synthetic_dataset(
    root: str | Path, per_class: int = 40, image_size: int = 224, seed: int = 42, jpeg_quality: int = 90
) -> dict[str, object]:
    """Write `synthetic_files` under `root` (for tests and benchmarks; the demo writes them through the
    catalog) and return a summary."""
    root = Path(root)
    for relative, content in synthetic_files(per_class, image_size, seed, jpeg_quality).items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)
    return {
        "root": str(root),
        "per_class": per_class,
        "image_size": image_size,
        "seed": seed,
        "counts": dict.fromkeys(CLASSES, per_class),
    }
