"""The served model under load: `mlflow models serve` on localhost, answering a bounded burst of
concurrent requests.

Run from the project root:
    python benchmarks/serving.py                       # the trained data/06_models/model.keras
    python benchmarks/serving.py --model-uri models:/all_detection@champion
    python benchmarks/serving.py --requests 64 --concurrency 8 --images-per-request 1

A model file is first registered in a throwaway SQLite store (the project's own registration code),
so the project's `mlflow.db` is untouched; a model URI is served from `--tracking-uri` (the project's
store by default). Every answer is checked: one row per image sent, four probabilities summing to 1.
The last line printed is one JSON object (requests per second, p50/p99 latency), also written to
`benchmarks/results/`. The figures are this machine's: the server runs the model on its CPU or GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
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

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
PROBABILITY_COLUMNS = ["prob_Benign", "prob_Early", "prob_Pre", "prob_Pro"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def served(model_uri: str, tracking_uri: str, startup_timeout: float = 180) -> Iterator[str]:
    """`mlflow models serve` of `model_uri` on a free localhost port, with the local environment;
    yields the server's base URL once `/ping` answers, and stops the server on the way out."""
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    # The server starts uvicorn by name: it must find the one beside this interpreter.
    path = f"{mlflow_cli.parent}{os.pathsep}{os.environ['PATH']}"
    environment = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}
    command = [str(mlflow_cli), "models", "serve", "-m", model_uri, "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=PROJECT / "data" / "06_models" / "model.keras")
    parser.add_argument("--model-uri", help="serve this MLflow model URI instead of --model")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{PROJECT / 'mlflow.db'}")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--images-per-request", type=int, default=1)
    args = parser.parse_args()

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
