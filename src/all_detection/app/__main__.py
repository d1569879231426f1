"""`python -m all_detection.app`: the smear page on http://127.0.0.1:8000, serving the project's
champion (or, after the demo alone, its synthetic-data model) from the project's MLflow store."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from all_detection.quiet import silence_known_noise


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m all_detection.app", description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", help="an MLflow model URI (default: models:/all_detection@champion)")
    parser.add_argument("--project", type=Path, default=Path(), help="the Kedro project (default: here)")
    parser.add_argument("--env", help="the Kedro environment whose configuration is read (default: local)")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to let other machines in")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--queue", type=int, default=32, help="single-image requests waiting; more get 503")
    parser.add_argument("--batch-files", type=int, default=1000, help="files in one folder or zip")
    parser.add_argument("--request-mb", type=int, default=512, help="bytes of one request, in MiB")
    parser.add_argument(
        "--mlflow-ui", default="http://127.0.0.1:5000", help="where `kedro mlflow ui` serves, for links"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    silence_known_noise()
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn  # noqa: PLC0415 - after the noise filters, as the libraries load

    from all_detection.app.loading import load_page_model  # noqa: PLC0415
    from all_detection.app.server import Limits, create_app  # noqa: PLC0415

    model = load_page_model(arguments.project.resolve(), arguments.env, arguments.model_uri)
    limits = Limits(queue=arguments.queue, batch_files=arguments.batch_files, request_mb=arguments.request_mb)
    app = create_app(model, limits, arguments.mlflow_ui)
    logging.getLogger(__name__).info("Serving %s on http://%s:%d", model.uri, arguments.host, arguments.port)
    uvicorn.run(app, host=arguments.host, port=arguments.port, log_level="info")


if __name__ == "__main__":
    main()
