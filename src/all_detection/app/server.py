"""The smear page's web server: FastAPI, a plain HTML page with its own script and style (no CDN, no
framework to download), and a bounded queue in front of one model worker.

The model runs on one worker thread, so the event loop stays free: the page, its progress and its
health answer while images are scored. At most `workers + queue` single-image requests are admitted at
a time (the running ones and those queued behind them); one more gets 503 "busy, retry" with a
Retry-After header, never a crash. A batch is scored a slice of `inference.batch_size` images at a
time on the same worker, so single images are answered between its slices; batches are scored one
after another, each from a fresh compiled step (`scoring.start_batch_scoring`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile

from all_detection.app.loading import PageModel
from all_detection.app.scoring import (
    DISCLAIMER,
    extract_zip,
    folder_slices,
    joined,
    labelled_summary,
    remove_folder,
    safe_relative_path,
    score_slice,
    score_upload,
    single_top_folder,
    start_batch_scoring,
)
from all_detection.image_io import ImageFolder
from all_detection.layout import OK
from all_detection.pipelines.inference.nodes import scan_inference_folder

logger = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
BUSY = "busy, retry"


@dataclass(frozen=True)
class Limits:
    """What one request and the server as a whole may ask for."""

    #: Single-image requests admitted beyond those running: they wait in line for the model.
    queue: int = 32
    #: Model worker threads (one uses every core through the model's own threads).
    workers: int = 1
    #: Files in one batch (a folder or a zip).
    batch_files: int = 1000
    #: Batches admitted at a time: one scored, the others waiting their turn.
    batches: int = 2
    #: Bytes of one request's body: an image, or a batch's files or zip.
    request_mb: int = 512
    #: Finished batches whose tables are kept for download.
    kept_batches: int = 16


class RequestGate:
    """Admits at most `capacity` requests at a time; the rest are refused at once, not queued."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.admitted = 0

    def enter(self) -> bool:
        if self.admitted >= self.capacity:
            return False
        self.admitted += 1
        return True

    def leave(self) -> None:
        self.admitted -= 1


@dataclass
class Batch:
    """A batch being scored: its progress, then its table and summary."""

    id: str
    folder: Path
    files: int = 0
    usable: int = 0
    scored: int = 0
    state: str = "checking"
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    seconds: float | None = None
    predictions: Any = None
    summary: dict[str, Any] | None = None


def busy() -> JSONResponse:
    return JSONResponse(
        {"error": BUSY, "message": "The server is scoring as many images as it queues; retry in a second."},
        status_code=503,
        headers={"Retry-After": "1"},
    )


def refused(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message, "message": message}, status_code=status)


class SmearPage:
    """The page's state and its answers: the model, one worker thread, the two gates, the batches."""

    def __init__(self, model: PageModel, limits: Limits, mlflow_ui: str | None) -> None:
        self.model, self.limits, self.mlflow_ui = model, limits, mlflow_ui
        self.worker = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="model")
        self.singles = RequestGate(limits.workers + limits.queue)
        self.batch_gate = RequestGate(limits.batches)
        self.one_batch_at_a_time = asyncio.Lock()
        self.batches: dict[str, Batch] = {}
        self.numbers = itertools.count(1)

    async def on_worker(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self.worker, function, *args)

    def too_large(self, request: Request) -> JSONResponse | None:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limits.request_mb * 2**20:
            return refused(f"The request is larger than {self.limits.request_mb} MB.", 413)
        return None

    async def page(self) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "admitted": self.singles.admitted, "capacity": self.singles.capacity}

    async def model_card(self) -> dict[str, Any]:
        card, model = dict(self.model.card), self.model
        if self.mlflow_ui and card.get("run_id"):
            runs = f"{self.mlflow_ui.rstrip('/')}/#/experiments/{card['experiment_id']}/runs"
            card["mlflow_run_url"] = f"{runs}/{card['run_id']}"
        colour = model.colour_range or {}
        return card | {
            "disclaimer": DISCLAIMER,
            "preprocessing": {key: model.preprocessing[key] for key in ("image_size", "input_mode")},
            "colour_range": {key: colour.get(key) for key in ("limit", "quantile", "images")}
            if colour
            else None,
            "limits": {key: getattr(self.limits, key) for key in ("queue", "batch_files", "request_mb")},
        }

    async def score(self, request: Request) -> Response:
        """One image, form field `image`: its answer (`scoring.score_upload`), or 503 busy."""
        if not self.singles.enter():
            return busy()
        try:
            if refusal := self.too_large(request):
                return refusal
            form = await request.form(max_files=1, max_fields=4)
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                return refused("Send one image as the form field 'image'.")
            data = await upload.read()
            name = upload.filename or "image"
            with tempfile.TemporaryDirectory(prefix="smear-") as folder:
                return JSONResponse(await self.on_worker(score_upload, self.model, Path(folder), name, data))
        except ValueError as error:
            return refused(str(error))
        finally:
            self.singles.leave()

    async def start_batch(self, request: Request) -> Response:
        """A folder's files (form fields `files`, named by their relative paths) or one zip: 202 with
        the batch's id, scored in the background."""
        if refusal := self.too_large(request):
            return refusal
        if not self.batch_gate.enter():
            return busy()
        batch = Batch(id=f"{next(self.numbers)}", folder=Path(tempfile.mkdtemp(prefix="smear-batch-")))
        try:
            root = await self._receive(request, batch.folder)
        except (ValueError, OSError, zipfile.BadZipFile) as error:
            self.batch_gate.leave()
            remove_folder(batch.folder)
            return refused(str(error))
        except BaseException:
            self.batch_gate.leave()
            remove_folder(batch.folder)
            raise
        finished = [key for key, kept in self.batches.items() if kept.state in ("done", "failed")]
        for old in finished[: max(0, len(self.batches) + 1 - self.limits.kept_batches)]:
            del self.batches[old]
        self.batches[batch.id] = batch
        asyncio.get_running_loop().create_task(self._run(batch, single_top_folder(root)))
        return JSONResponse({"id": batch.id}, status_code=202)

    async def _receive(self, request: Request, folder: Path) -> Path:
        form = await request.form(max_files=self.limits.batch_files, max_fields=self.limits.batch_files + 4)
        uploads = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not uploads:
            raise ValueError("Send a folder's images, or one zip, as form fields 'files'.")
        root = folder / "upload"
        root.mkdir()
        if len(uploads) == 1 and (uploads[0].filename or "").lower().endswith(".zip"):
            archive = folder / "upload.zip"
            archive.write_bytes(await uploads[0].read())
            max_bytes = int(self.model.ingestion["max_file_mb"] * 2**20)
            try:
                await self.on_worker(extract_zip, archive, root, self.limits.batch_files, max_bytes)
            except zipfile.BadZipFile as error:
                raise ValueError(f"The zip cannot be read: {error}") from None
            return root
        for upload in uploads:
            target = root / safe_relative_path(upload.filename or "image")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(await upload.read())
        return root

    async def _run(self, batch: Batch, root: Path) -> None:
        model = self.model
        try:
            images = ImageFolder(root)
            files = await self.on_worker(scan_inference_folder, images, model.ingestion)
            batch.files, batch.usable = len(files), int((files["status"] == OK).sum())
            batch.state = "waiting"
            parts = []
            async with self.one_batch_at_a_time:
                batch.state = "scoring"
                await self.on_worker(start_batch_scoring, model)
                # A slice of `batch_size` images per turn of the worker: single images go in between.
                for rows in folder_slices(files, model.batch_size):
                    part = await self.on_worker(score_slice, model, images, files, rows)
                    parts.append(part)
                    batch.scored += int((part["status"] == OK).sum())
            batch.predictions = joined(parts)
            batch.summary = labelled_summary(batch.predictions)
            batch.state = "done"
        except Exception as error:
            logger.exception("Batch %s failed", batch.id)
            batch.state, batch.error = "failed", f"{type(error).__name__}: {error}"
        finally:
            batch.seconds = round(time.monotonic() - batch.started, 2)
            self.batch_gate.leave()
            remove_folder(batch.folder)

    async def batch_status(self, batch_id: str) -> Response:
        """A batch's progress; once done, its summary and table rows."""
        batch = self.batches.get(batch_id)
        if batch is None:
            return refused(f"No batch {batch_id} (finished batches are kept for a while only).", 404)
        status: dict[str, Any] = {
            "id": batch.id, "state": batch.state, "files": batch.files, "usable": batch.usable,
            "scored": batch.scored, "error": batch.error, "seconds": batch.seconds,
        }  # fmt: skip
        if batch.state == "done":
            table = batch.predictions.astype(object).where(batch.predictions.notna(), None)
            status |= {"summary": batch.summary, "rows": table.to_dict(orient="records")}
        return JSONResponse(status)

    async def batch_csv(self, batch_id: str) -> Response:
        """A finished batch's table as the inference pipeline writes predictions.csv."""
        batch = self.batches.get(batch_id)
        if batch is None or batch.state != "done":
            return refused(f"No finished batch {batch_id}.", 404)
        return PlainTextResponse(
            batch.predictions.to_csv(index=False),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="predictions-batch-{batch.id}.csv"'},
        )


def create_app(model: PageModel, limits: Limits | None = None, mlflow_ui: str | None = None) -> FastAPI:
    """The page and its API for `model`: `/` the page, `/api/model` its card, `/api/score` one image,
    `/api/batches` a folder or zip (then `/api/batches/<id>` its progress and table, and
    `/api/batches/<id>/predictions.csv`), `/api/health`."""
    page = SmearPage(model, limits or Limits(), mlflow_ui)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        page.worker.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="ALL Detection: smear page", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.page = page
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_api_route("/", page.page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/api/health", page.health, methods=["GET"])
    app.add_api_route("/api/model", page.model_card, methods=["GET"])
    app.add_api_route("/api/score", page.score, methods=["POST"])
    app.add_api_route("/api/batches", page.start_batch, methods=["POST"])
    app.add_api_route("/api/batches/{batch_id}", page.batch_status, methods=["GET"])
    app.add_api_route("/api/batches/{batch_id}/predictions.csv", page.batch_csv, methods=["GET"])
    return app
