"""The smear page as people use it: `python -m all_detection.app` serving the model a demo run registered
in a project's own SQLite store, over HTTP. Its answers are compared with `kedro run --pipeline
inference` on the same files."""

from __future__ import annotations

import base64
import contextlib
import io
import shutil
import threading
import time
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from all_detection.app.process import free_port
from all_detection.layout import CLASSES, PROBABILITY_COLUMNS
from tests.app.support import (
    HOSTILE,
    finished_batch,
    get_json,
    pipeline_predictions,
    post_files,
    zipped,
)

# A demo run, the app started in its own process, and scoring.
pytestmark = pytest.mark.slow


def test_the_page_serves_the_demo_model_with_its_card_and_nothing_from_the_network(
    page: str, demo_project: Path
):
    with urllib.request.urlopen(page) as answer:
        html = answer.read().decode()
    assert "For research, not diagnosis." in html
    card = get_json(f"{page}/api/model")
    assert card["registered_name"] == "all_detection_synthetic" and card["synthetic"] is True
    assert card["model_uri"] == "models:/all_detection_synthetic/1"
    assert 0 <= card["test"]["accuracy"] <= 1 and len(card["test"]["interval"]) == 2
    assert card["shortcut_audit"]["colour_null_accuracy"] is not None
    assert card["colour_range"]["limit"] > 0 and card["run_id"] and card["model_card_md"].startswith("#")
    assert card["mlflow_run_url"].endswith(f"/runs/{card['run_id']}")
    assert not (demo_project.parent / "mlflow.db").exists()  # started from outside, the project's store
    static = Path(__file__).parents[2] / "src/all_detection/app/static"
    for asset in static.iterdir():  # every asset is served from here: no CDN, no web font
        assert "http://" not in asset.read_text() and "https://" not in asset.read_text(), asset.name


def test_an_image_gets_the_inference_pipeline_s_row_and_its_evidence(page: str, demo_project: Path):
    name = "Original/Pro/WBC-Malignant-Pro-002.jpg"
    alone = demo_project / "alone"
    alone.mkdir()
    shutil.copy(demo_project / "smears" / name, alone / "smear.jpg")
    status, answer, _ = post_files(
        f"{page}/api/score", [("image", "smear.jpg", (alone / "smear.jpg").read_bytes())]
    )
    assert status == 200 and answer["status"] == "ok"
    expected = pipeline_predictions(demo_project, alone, "models:/all_detection_synthetic/1").iloc[0]
    assert answer["predicted"] == expected["predicted"]
    # Scored alone, as the pipeline scores a folder of one: the same probabilities to the last digit.
    assert [answer["probabilities"][label] for label in CLASSES] == expected[PROBABILITY_COLUMNS].tolist()
    assert sum(answer["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    benign = answer["probabilities"]["Benign"]
    assert answer["detection"]["malignant_probability"] == pytest.approx(1 - benign)
    for picture in answer["pictures"].values():
        png = Image.open(io.BytesIO(base64.b64decode(picture.removeprefix("data:image/png;base64,"))))
        assert png.format == "PNG" and png.size == (224, 224)
    assert answer["colour"]["available"] and answer["colour"]["within"]
    assert answer["blast_mask_message"].startswith("Blast mask")
    assert answer["disclaimer"] == "For research, not diagnosis."


def test_an_image_unlike_the_training_images_is_warned(page: str, demo_project: Path):
    smear = np.asarray(Image.open(demo_project / "smears/Original/Early/WBC-Malignant-Early-001.jpg"))
    recoloured = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(smear[..., [1, 2, 0]])).save(recoloured, "PNG")  # a green stain
    status, answer, _ = post_files(f"{page}/api/score", [("image", "green.png", recoloured.getvalue())])
    assert status == 200 and answer["status"] == "ok"
    colour = answer["colour"]
    assert not colour["within"] and colour["distance"] > colour["limit"]
    assert colour["message"].startswith("Warning: this image's colour is unlike the training images'")


@pytest.mark.parametrize(("name", "reason"), HOSTILE.items())
def test_a_bad_file_gets_its_reason_and_nothing_crashes(
    page: str, demo_project: Path, name: str, reason: str
):
    data = (demo_project / "smears/odd" / name).read_bytes()
    status, answer, _ = post_files(f"{page}/api/score", [("image", name, data)])
    assert status == 200 and answer["status"] == "quarantined" and answer["reason"] == reason
    assert answer["message"]
    assert get_json(f"{page}/api/health")["status"] == "ok"


def test_a_zip_of_class_folders_gives_the_pipeline_s_table_and_the_accuracy(page: str, demo_project: Path):
    folder = demo_project / "smears"
    status, started, _ = post_files(f"{page}/api/batches", [("files", "smears.zip", zipped(folder))])
    assert status == 202
    batch = finished_batch(page, started["id"])
    assert batch["state"] == "done" and batch["files"] == len(list(folder.rglob("*.*")))
    with urllib.request.urlopen(f"{page}/api/batches/{started['id']}/predictions.csv") as answer:
        text = answer.read()
    (demo_project / "page_predictions.csv").write_bytes(text)  # kept for a failure's inspection
    table = pd.read_csv(io.BytesIO(text))
    expected = pipeline_predictions(demo_project, folder, "models:/all_detection_synthetic/1")
    pd.testing.assert_frame_equal(table, expected, check_exact=True)
    assert table.set_index("path").loc[[f"odd/{name}" for name in HOSTILE], "reason"].tolist() == list(
        HOSTILE.values()
    )
    summary = batch["summary"]
    scored = table[table["status"] == "ok"]
    truth = scored["path"].str.split("/").str[1]
    assert summary["labelled"] == len(scored) == 12
    assert summary["accuracy"] == pytest.approx((truth == scored["predicted"]).mean(), abs=1e-6)
    assert np.sum(summary["confusion_matrix"]["counts"]) == 12


def test_a_zip_cannot_write_outside_its_folder(page: str, demo_project: Path):
    smear = (demo_project / "smears/Original/Benign/WBC-Benign-001.jpg").read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../escaped.jpg", smear)
        archive.writestr("/tmp/absolute.jpg", smear)
        link = zipfile.ZipInfo("link.jpg")
        link.external_attr = 0o120777 << 16  # a symbolic link to a file outside
        archive.writestr(link, "/etc/passwd")
    status, started, _ = post_files(f"{page}/api/batches", [("files", "odd.zip", buffer.getvalue())])
    assert status == 202
    batch = finished_batch(page, started["id"])
    rows = {row["path"]: row for row in batch["rows"]}
    assert set(rows) == {"escaped.jpg", "tmp/absolute.jpg", "link.jpg"}
    assert rows["link.jpg"]["reason"] == "symbolic link (not followed)"
    assert rows["escaped.jpg"]["status"] == "ok"
    assert not (demo_project.parent / "escaped.jpg").exists()


def test_requests_beyond_the_bound_are_told_busy_retry(demo_project: Path):
    """One worker and a queue of one: while the worker is held (a slow model), two requests are
    admitted and wait; the third is answered 503 "busy, retry" at once; then both waiting ones succeed."""
    import uvicorn  # noqa: PLC0415

    from all_detection.app.loading import load_page_model  # noqa: PLC0415
    from all_detection.app.server import BUSY, Limits, create_app  # noqa: PLC0415

    app = create_app(load_page_model(demo_project, "demo"), Limits(queue=1, workers=1))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    while not server.started:
        time.sleep(0.05)
    release = threading.Event()
    app.state.page.worker.submit(release.wait)  # the model worker is busy until released
    smear = (demo_project / "smears/Original/Pre/WBC-Malignant-Pre-001.jpg").read_bytes()
    send = lambda: post_files(f"{url}/api/score", [("image", "smear.jpg", smear)])  # noqa: E731
    try:
        with contextlib.ExitStack() as stack:
            clients = stack.enter_context(ThreadPoolExecutor(max_workers=2))
            waiting = [clients.submit(send) for _ in range(2)]
            while get_json(f"{url}/api/health")["admitted"] < 2:
                time.sleep(0.05)
            status, body, headers = send()
            assert status == 503 and body["error"] == BUSY and headers["Retry-After"] == "1"
            release.set()
            assert [future.result()[0] for future in waiting] == [200, 200]
        assert send()[0] == 200
    finally:
        release.set()
        server.should_exit = True
        thread.join(timeout=30)
