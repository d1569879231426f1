"""The served model under load: `mlflow models serve` on localhost, and the smear page's scoring
endpoint (`python -m all_detection.app`), each answering a bounded burst of concurrent requests.

Run from the project root:
    python benchmarks/serving.py                       # REST: the trained data/06_models/model.keras
    python benchmarks/serving.py --model-uri models:/all_detection@champion
    python benchmarks/serving.py --requests 64 --concurrency 8 --images-per-request 1
    python benchmarks/serving.py --page --project . --requests 1000 --concurrency 32
                                                       # the page and REST side by side, one model

REST alone: a model file is first registered in a throwaway SQLite store (the project's own
registration code), so the project's `mlflow.db` is untouched; a model URI is served from
`--tracking-uri` (the project's store by default). Every answer is checked: one row per image sent,
four probabilities summing to 1.

With `--page`: the project's model (its champion, or `--model-uri`) is served both ways from the
project's store. Synthetic smears at the model's size go to the page as JPEG files (its endpoint
decodes, prepares, predicts with the model's test-time augmentation, and draws Grad-CAM and the blast
mask) and to REST as the same prepared tensors; every answer is checked against the model's own
probabilities for that image, computed here. Also measured: the page's single-image time with no other
load, and how fast the page and a batch's progress answer while a batch of 100 images is scored.

The last line printed is one JSON object (requests per second, p50/p99 latency), also written to
`benchmarks/results/`. The figures are this machine's: the servers run the model on its CPU or GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np

from all_detection.app.process import free_port

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
PROBABILITY_COLUMNS = ["prob_Benign", "prob_Early", "prob_Pre", "prob_Pro"]


@contextlib.contextmanager
def served(
    model_uri: str, tracking_uri: str, startup_timeout: float = 180, request_timeout: int = 600
) -> Iterator[str]:
    """`mlflow models serve` of `model_uri` on a free localhost port, with the local environment;
    yields the server's base URL once `/ping` answers, and stops the server on the way out. Its
    request timeout is raised from MLflow's 60 s, which a queued request exceeds in a burst of 32
    concurrent 224 px requests on 2 cores (HTTP 504 Gateway Timeout)."""
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    # The server starts uvicorn by name: it must find the one beside this interpreter.
    path = f"{mlflow_cli.parent}{os.pathsep}{os.environ['PATH']}"
    environment = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}
    command = [str(mlflow_cli), "models", "serve", "-m", model_uri, "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port), "--timeout", str(request_timeout)]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/ping", timeout=2) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        tail = log.read().decode(errors="replace")[-3000:]
                        exited = server.poll() is not None
                        state = "exited" if exited else f"did not answer in {startup_timeout:.0f} s"
                        raise RuntimeError(f"mlflow models serve {state}:\n{tail}") from None
                    time.sleep(0.5)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


class Answer(NamedTuple):
    seconds: float
    probabilities: np.ndarray  # (images, 4), in PROBABILITY_COLUMNS order


def invoke(url: str, images: np.ndarray, timeout: float = 120) -> Answer:
    """One request to `/invocations` with a batch of images, as the README's curl sends it."""
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps({"inputs": images.tolist()}).encode(),
        headers={"Content-Type": "application/json"},
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        predictions = json.loads(answer.read())["predictions"]
    seconds = time.perf_counter() - started
    return Answer(seconds, np.array([[row[column] for column in PROBABILITY_COLUMNS] for row in predictions]))


def send_burst(url: str, batches: Sequence[np.ndarray], concurrency: int) -> tuple[list[Answer], float]:
    """Send every batch as its own request, `concurrency` at a time; the answers in the batches' order,
    and the wall time of the whole burst."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as clients:
        answers = list(clients.map(lambda images: invoke(url, images), batches))
    return answers, time.perf_counter() - started


def load_summary(answers: Sequence[Answer], wall_seconds: float) -> dict[str, float]:
    latencies = np.array([answer.seconds for answer in answers])
    return {
        "requests": len(answers),
        "requests_per_second": round(len(answers) / wall_seconds, 3),
        "images_per_second": round(sum(len(answer.probabilities) for answer in answers) / wall_seconds, 3),
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 4),
        "latency_p99_s": round(float(np.percentile(latencies, 99)), 4),
        "latency_max_s": round(float(latencies.max()), 4),
    }


def check_answers(answers: Sequence[Answer], batches: Sequence[np.ndarray]) -> None:
    """Every request answered with one row of four probabilities per image sent."""
    for number, (answer, images) in enumerate(zip(answers, batches, strict=True)):
        probabilities = answer.probabilities
        if probabilities.shape != (len(images), len(PROBABILITY_COLUMNS)):
            raise AssertionError(f"request {number}: {probabilities.shape} for {len(images)} images")
        if not np.allclose(probabilities.sum(axis=1), 1, atol=1e-4):
            raise AssertionError(f"request {number}: probabilities do not sum to 1")


def register_file(model_file: Path, store: Path) -> tuple[str, str]:
    """Register a trained `.keras` file in a throwaway store; its model URI and tracking URI."""
    import keras  # noqa: PLC0415 - the client side of the benchmark needs no Keras
    import mlflow  # noqa: PLC0415

    import all_detection.core.model  # noqa: F401, PLC0415 - registers the custom layers
    from all_detection.serving import register_model  # noqa: PLC0415

    tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.create_experiment("serving_benchmark", (store / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    model = keras.models.load_model(model_file, safe_mode=True)
    example = np.zeros((1, *model.input_shape[1:]), dtype=np.float32)
    with mlflow.start_run():
        registration = register_model(model, example)
    return registration["model_uri"], tracking_uri


# --- the smear page ------------------------------------------------------------------------------


@contextlib.contextmanager
def page_served(project: Path, model_uri: str | None) -> Iterator[str]:
    """`python -m all_detection.app` for `project` on a free localhost port; its base URL once it answers."""
    from all_detection.app.process import page_process  # noqa: PLC0415

    arguments = ["--model-uri", model_uri] if model_uri else []
    with tempfile.NamedTemporaryFile("w+") as log, page_process(project, arguments, log) as url:
        yield url


def multipart(field: str, files: Sequence[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "all-detection-benchmark"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def invoke_page(url: str, name: str, data: bytes, timeout: float = 600) -> Answer:
    """One image to the page's scoring endpoint, as the page sends it. A "busy, retry" (503) is an
    error here: the burst stays within the page's bound."""
    body, content_type = multipart("image", [(name, data)])
    request = urllib.request.Request(f"{url}/api/score", data=body, headers={"Content-Type": content_type})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        result = json.loads(answer.read())
    seconds = time.perf_counter() - started
    if result["status"] != "ok":
        raise AssertionError(f"{name}: {result}")
    return Answer(
        seconds, np.array([[result["probabilities"][c.removeprefix("prob_")] for c in PROBABILITY_COLUMNS]])
    )


def smears_for(model: object, count: int) -> tuple[list[tuple[str, bytes]], np.ndarray, np.ndarray]:
    """`count` synthetic smears at the model's image size: JPEG files, the tensors the model is fed
    for them (`segmentation.model_input`) and the model's probabilities for each alone."""
    from all_detection.image_io import decode_rgb  # noqa: PLC0415
    from all_detection.segmentation import model_input  # noqa: PLC0415
    from all_detection.synthetic import synthetic_files  # noqa: PLC0415

    size = model.preprocessing["image_size"]
    originals = [
        (name.rsplit("/", 1)[-1], data)
        for name, data in synthetic_files(per_class=-(-count // 4), image_size=size, seed=5).items()
        if name.startswith("Original/")
    ][:count]
    tensors = np.stack([model_input(decode_rgb(data).rgb, model.preprocessing)[0] for _, data in originals])
    expected = np.concatenate([model.network.predict_on_batch(tensor[None]) for tensor in tensors])
    return originals, tensors, expected


def check_against(answers: Sequence[Answer], expected: np.ndarray, tolerance: float) -> float:
    """Every answer within `tolerance` of the model's own probabilities; the largest difference."""
    worst = 0.0
    for number, answer in enumerate(answers):
        difference = float(np.abs(answer.probabilities[0] - expected[number % len(expected)]).max())
        if difference > tolerance:
            raise AssertionError(f"request {number}: probabilities {difference:.2e} from the model's own")
        worst = max(worst, difference)
    return worst


def page_while_batch(url: str, files: Sequence[tuple[str, bytes]]) -> dict[str, float]:
    """A batch of `files` sent to the page, and the page and the batch's progress requested every 0.2 s
    until it is done: how long they take to answer meanwhile, and the batch's own time."""
    named = [(f"batch/{number:04d}-{name}", data) for number, (name, data) in enumerate(files)]
    body, content_type = multipart("files", named)
    request = urllib.request.Request(f"{url}/api/batches", data=body, headers={"Content-Type": content_type})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as answer:
        batch = json.loads(answer.read())["id"]
    latencies, polls = [], 0
    while True:
        for path in ("/", f"/api/batches/{batch}"):
            begun = time.perf_counter()
            with urllib.request.urlopen(f"{url}{path}", timeout=60) as answer:
                content = answer.read()
            latencies.append(time.perf_counter() - begun)
        polls += 1
        state = json.loads(content)
        if state["state"] in ("done", "failed"):
            break
        time.sleep(0.2)
    if state["state"] != "done" or state["usable"] != len(files):
        raise AssertionError(f"batch of {len(files)}: {state}")
    return {
        "batch_images": len(files),
        "batch_seconds": round(time.perf_counter() - started, 2),
        "progress_polls": polls,
        "page_and_progress_latency_p50_s": round(float(np.percentile(latencies, 50)), 4),
        "page_and_progress_latency_max_s": round(float(np.max(latencies)), 4),
    }


def page_and_rest(project: Path, model_uri: str | None, requests: int, concurrency: int) -> dict:
    """The page's scoring endpoint and `mlflow models serve` of the same model, one after the other,
    each a burst of `requests` single-image requests from `concurrency` clients; answers checked."""
    import mlflow  # noqa: PLC0415

    from all_detection.app.loading import load_page_model  # noqa: PLC0415

    model = load_page_model(project, None, model_uri)
    tracking_uri = mlflow.get_tracking_uri()
    smears, tensors, expected = smears_for(model, 16)
    result: dict = {"model_uri": model.uri, "image_size": model.preprocessing["image_size"],
                    "tta": model.card.get("tta"), "concurrency": concurrency,
                    "requests": requests, "cpu_count": os.cpu_count()}  # fmt: skip
    with page_served(project, model.uri) as url:
        invoke_page(url, *smears[0])  # the first request builds the model's compiled steps
        alone = [invoke_page(url, *smears[number % len(smears)]).seconds for number in range(10)]
        result["page_single_image_s"] = {
            "p50": round(float(np.median(alone)), 4),
            "max": round(max(alone), 4),
        }
        result["page_during_batch"] = page_while_batch(url, [smears[n % len(smears)] for n in range(100)])
        jobs = [smears[number % len(smears)] for number in range(requests)]
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as clients:
            answers = list(clients.map(lambda job: invoke_page(url, *job), jobs))
        wall = time.perf_counter() - started
        result["page"] = load_summary(answers, wall) | {
            "max_difference": check_against(answers, expected, 1e-5)
        }
    print(json.dumps(result), flush=True)  # the page's figures, kept should REST fail
    batches = [tensors[number % len(tensors)][None].astype(np.float32) for number in range(requests)]
    with served(model.uri, tracking_uri) as url:
        invoke(url, batches[0])
        answers, wall = send_burst(url, batches, concurrency)
    result["rest"] = load_summary(answers, wall) | {"max_difference": check_against(answers, expected, 1e-4)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=PROJECT / "data" / "06_models" / "model.keras")
    parser.add_argument("--model-uri", help="serve this MLflow model URI instead of --model")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{PROJECT / 'mlflow.db'}")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--page", action="store_true", help="the smear page and REST, side by side")
    parser.add_argument("--project", type=Path, default=PROJECT, help="with --page: the project served")
    args = parser.parse_args()
    if args.page:
        result = {
            "benchmark": "serving_page_and_rest",
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        result |= page_and_rest(args.project.resolve(), args.model_uri, args.requests, args.concurrency)
        RESULTS.mkdir(exist_ok=True)
        with (RESULTS / "serving.jsonl").open("a") as results:
            results.write(json.dumps(result) + "\n")
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as store:
        if args.model_uri:
            model_uri, tracking_uri = args.model_uri, args.tracking_uri
        else:
            model_uri, tracking_uri = register_file(args.model, Path(store))
        from mlflow.models import get_model_info  # noqa: PLC0415

        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        shape = get_model_info(model_uri).signature.inputs.to_dict()[0]["tensor-spec"]["shape"]
        rng = np.random.default_rng(0)
        batches = [
            rng.integers(0, 256, (args.images_per_request, *shape[1:])).astype(np.float32)
            for _ in range(args.requests)
        ]
        with served(model_uri, tracking_uri) as url:
            invoke(url, batches[0])  # the first request builds the model's compiled predict step
            answers, wall = send_burst(url, batches, args.concurrency)
        check_answers(answers, batches)
    result = {
        "benchmark": "serving",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_uri": model_uri if args.model_uri else str(args.model),
        "image_shape": shape[1:],
        "concurrency": args.concurrency,
        "images_per_request": args.images_per_request,
        "cpu_count": os.cpu_count(),
        **load_summary(answers, wall),
    }
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "serving.jsonl").open("a") as results:
        results.write(json.dumps(result) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
