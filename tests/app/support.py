"""What the smear page's tests share: a folder of unseen smears and bad files, the app started as users
start it, and plain HTTP calls to it."""

from __future__ import annotations

import contextlib
import io
import json
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from all_detection.app.process import page_process
from all_detection.synthetic import synthetic_files
from tests.defects import png_header_claiming
from tests.projects import run_session

SMALL_DEMO = {
    "demo": {"synthetic_dataset": {"per_class": 10, "image_size": 64, "seed": 42}},
    "preprocessing": {"image_size": 32},
    "training": {"epochs": 2},
}
#: Files every upload path must turn into a quarantine row with this reason, never an error.
HOSTILE = {
    "truncated.jpg": "truncated image",
    "login-page.jpg": "not an image",
    "bomb.png": "decompression bomb",
    "empty.jpg": "empty file",
}


def hostile_bytes(good_jpeg: bytes) -> dict[str, bytes]:
    return {
        "truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
        "login-page.jpg": b"<html>Kaggle login required</html>",
        "bomb.png": png_header_claiming(30_000, 30_000),
        "empty.jpg": b"",
    }


def write_smears(root: Path) -> dict[str, bytes]:
    """Synthetic smears in class folders (Original/<class>/...), never seen in training, and the
    hostile files beside them; returns what was written."""
    files = {
        name: data for name, data in synthetic_files(per_class=3, image_size=64, seed=11).items()
        if name.startswith("Original/")
    }  # fmt: skip
    files |= {f"odd/{name}": data for name, data in hostile_bytes(next(iter(files.values()))).items()}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def zipped(root: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(root).as_posix())
    return buffer.getvalue()


def pipeline_predictions(project: Path, folder: Path, model_uri: str) -> pd.DataFrame:
    """`kedro run --pipeline inference` of `folder` with the model the page serves."""
    run_session(project, env="demo", pipeline="inference", **SMALL_DEMO,
                inference={"input_dir": str(folder), "model_uri": model_uri})  # fmt: skip
    return pd.read_csv(project / "data/07_model_output/predictions.csv")


@contextlib.contextmanager
def started_app(project: Path, *arguments: str) -> Iterator[str]:
    """`python -m all_detection.app --project <project>` serving the demo's model on a free port,
    started from the folder above the project; its base URL once it answers. Its log is kept in the
    project folder for a failure's inspection."""
    arguments = ("--env", "demo", *arguments)
    log = (project / "app.log").open("a")
    with log, page_process(project, arguments, log, cwd=project.parent) as url:
        yield url


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as answer:
        return json.loads(answer.read())


def post_files(url: str, fields: list[tuple[str, str, bytes]]) -> tuple[int, dict, dict]:
    """A multipart POST of (field, filename, bytes); the status, JSON body and headers."""
    boundary = "smear-page-test-boundary"
    body = b""
    for field, name, data in fields:
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"  # fmt: skip
    body += f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read()), answer.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def finished_batch(url: str, batch_id: str) -> dict:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = get_json(f"{url}/api/batches/{batch_id}")
        if status["state"] in ("done", "failed"):
            return status
        time.sleep(0.3)
    raise AssertionError(f"batch {batch_id} did not finish")
