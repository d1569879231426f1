"""The smear page in a real browser: Debian's chromium driven by Playwright, as a person uses the page.
Never skipped: `.ci/run` installs chromium with apt (Playwright's own browser download is not possible
offline). Marked `browser`; the app and its demo model come from
the fixtures in tests/app/conftest.py."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.app.support import pipeline_predictions, zipped

pytestmark = [pytest.mark.slow, pytest.mark.browser]

#: Where the README's screenshot is copied when this is set (made by this test, on a synthetic smear).
SCREENSHOT_COPY = "ALL_DETECTION_SCREENSHOT"


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is not installed: `apt-get install chromium` (.ci/run does)")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root in a container, where chromium's sandbox cannot start.
        launched = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield launched
        launched.close()


def test_a_person_drops_in_smears_and_a_zip_and_reads_the_answers(
    browser, page: str, demo_project: Path, tmp_path: Path
):
    tab = browser.new_page(viewport={"width": 1200, "height": 1400})
    requested = []
    tab.on("request", lambda request: requested.append(request.url))
    tab.goto(page)
    tab.wait_for_selector("body[data-ready=true]")
    assert tab.is_visible("#synthetic-banner")  # the demo's model says it knows no real smear
    assert "Test accuracy" in tab.inner_text("#model-card")

    smears = demo_project / "smears"
    green = tmp_path / "green-stain.png"
    rgb = np.asarray(Image.open(smears / "Original/Early/WBC-Malignant-Early-001.jpg"))
    Image.fromarray(np.ascontiguousarray(rgb[..., [1, 2, 0]])).save(green)
    tab.set_input_files(
        "#image-input",
        [
            str(smears / "odd/truncated.jpg"),
            str(green),
            str(smears / "Original/Pro/WBC-Malignant-Pro-002.jpg"),
        ],
    )
    tab.wait_for_function("document.querySelectorAll('.result:not([data-status=pending])').length === 3")
    # Results are shown newest first.
    smear, recoloured, truncated = tab.query_selector_all(".result")
    assert truncated.get_attribute("data-status") == "quarantined"
    assert "truncated image" in truncated.query_selector(".error").inner_text()
    assert smear.get_attribute("data-status") == "ok"
    assert smear.get_attribute("data-predicted") in ("Benign", "Early", "Pre", "Pro")
    bars = smear.query_selector_all(".bar")
    probabilities = [float(bar.get_attribute("data-probability")) for bar in bars]
    assert len(bars) == 4 and sum(probabilities) == pytest.approx(1, abs=1e-5)
    heatmap = smear.query_selector(".picture-gradcam")
    assert heatmap.evaluate("image => image.complete && image.naturalWidth") == 224
    assert "For research, not diagnosis." in smear.inner_text()
    assert not smear.query_selector(".colour.warning")
    assert "unlike the training images" in recoloured.query_selector(".colour.warning").inner_text()

    tab.screenshot(path=str(tmp_path / "smear_page.png"), full_page=False)
    if os.environ.get(SCREENSHOT_COPY):
        shutil.copy(tmp_path / "smear_page.png", os.environ[SCREENSHOT_COPY])

    archive = tmp_path / "smears.zip"
    archive.write_bytes(zipped(smears))
    tab.set_input_files("#zip-input", str(archive))
    tab.wait_for_selector("#batch[data-state=done]", timeout=300_000)
    assert "Accuracy on the 12 images in class folders" in tab.inner_text("#batch-summary")
    assert tab.query_selector("#confusion-matrix")
    with tab.expect_download() as download:
        tab.click("#batch-csv")
    table = pd.read_csv(io.BytesIO(Path(download.value.path()).read_bytes()))
    expected = pipeline_predictions(demo_project, smears, "models:/all_detection_synthetic/1")
    pd.testing.assert_frame_equal(table, expected, check_exact=True)
    assert all(url.startswith(page) or url.startswith("data:") for url in requested), requested
    tab.close()
