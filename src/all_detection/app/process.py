"""The page as a process of its own, for the tests and the benchmark that talk to it over HTTP as a
browser does."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO


def free_port() -> int:
    """A localhost TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def page_process(
    project: Path, arguments: Sequence[str], log: IO, timeout: float = 300, cwd: Path | None = None
) -> Iterator[str]:
    """`python -m all_detection.app --project <project> <arguments>` on a free localhost port, run in
    `cwd` (default: here), its output written to `log`: its base URL once `/api/health` answers;
    stopped on leaving. A server that exits or does not answer within `timeout` seconds raises
    RuntimeError with the end of its log."""
    port = free_port()
    command = [sys.executable, "-m", "all_detection.app", "--project", str(project), "--port", str(port)]
    server = subprocess.Popen([*command, *arguments], stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    raise RuntimeError(Path(log.name).read_text(errors="replace")[-4000:]) from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
