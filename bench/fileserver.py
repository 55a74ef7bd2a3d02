"""The files every contender downloads, and the real web server that serves them: nginx on a free
loopback port, with its own prefix, configuration, pid file and error log in a temp dir.

The bytes come from ``worker.simulator.content`` (one seed per file, so no two files are alike and the
worker's reuse of identical copies never kicks in); each file's sha256 is computed while it is written.
One file, ``f/same.bin``, is also served under every name below ``/same/``, for the queue rows; the
directory ``f/many/`` is also listed (``autoindex``), so rclone's http backend can copy it whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Final

from common import BenchError, Children

from worker.simulator.content import iter_content

_START_TIMEOUT_S: Final = 15.0
SHARED_NAME: Final = "same.bin"
LISTED_DIR: Final = "many"  # under f/: the one directory nginx lists
_TEMP_PATH_FLAG = re.compile(r"--http-([a-z-]+)-temp-path=")


@dataclasses.dataclass(frozen=True, slots=True)
class ServedFile:
    """One file under the web root: its URL path (``/f/name``), size and sha256."""

    name: str
    size: int
    sha256: str

    @property
    def path(self) -> str:
        return f"/f/{self.name}"


def listed_path() -> str:
    """The URL path of the directory nginx lists, with its trailing slash."""
    return f"/f/{LISTED_DIR}/"


def shared_path(name: str) -> str:
    """The URL path under which nginx serves ``f/same.bin`` as ``name``."""
    return f"/same/{name}"


def write_file(www: Path, name: str, seed: int, size: int) -> ServedFile:
    """Write the asset ``(seed, size)`` to ``www/f/name``, readable by nginx's unprivileged workers."""
    target = www / "f" / name
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for chunk in iter_content(seed, size):
            digest.update(chunk)
            out.write(chunk)
    target.chmod(0o644)
    return ServedFile(name, size, digest.hexdigest())


def _free_port() -> int:
    # Another program could take it before nginx binds it; nginx then fails at once and we say so.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _temp_path_directives(nginx: str, prefix: Path) -> list[str]:
    """A ``*_temp_path`` inside ``prefix`` for each one this build has: its defaults (/var/lib/nginx/...)
    may not be writable, and naming a module the build lacks is a configuration error."""
    done = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=30, check=False)
    kinds = sorted(set(_TEMP_PATH_FLAG.findall(done.stderr + done.stdout)))
    return [f"{kind.replace('-', '_')}_temp_path {prefix / ('temp-' + kind)};" for kind in kinds]


def _config(prefix: Path, www: Path, port: int, temp_paths: list[str]) -> str:
    temp = "\n    ".join(temp_paths)
    return f"""# Written by bench/run.py for one benchmark run; removed with its temp dir.
daemon off;
worker_processes auto;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    {temp}
    server {{
        listen 127.0.0.1:{port};
        root {www};
        # Any name under /same/ is the one file f/{SHARED_NAME}: a queue of 100,000 jobs, each with
        # its own URL, needs no 100,000 files (the worker reuses no copy: cloudlayer publishes no sha256).
        location /same/ {{
            try_files /f/{SHARED_NAME} =404;
        }}
        # The files of many_small_s3, listed for rclone copy --http-url (its http backend reads links).
        location /f/{LISTED_DIR}/ {{
            autoindex on;
        }}
    }}
}}
"""


def _wait_listening(proc: subprocess.Popen[bytes], port: int, prefix: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"nginx exited with status {proc.returncode}: {_errors(prefix)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    waited = f"{_START_TIMEOUT_S:.0f} s"
    raise BenchError(f"nginx did not listen on 127.0.0.1:{port} within {waited}: {_errors(prefix)}")


def _errors(prefix: Path) -> str:
    """The last lines nginx wrote: on stderr before it read its configuration, to its log after."""
    lines: list[str] = []
    for name in ("stderr.log", "error.log"):
        log = prefix / name
        if log.exists():
            lines += log.read_text(errors="replace").strip().splitlines()[-3:]
    return " | ".join(lines) or "(no error output)"


def start_nginx(children: Children, nginx: str, prefix: Path, www: Path) -> str:
    """Serve ``www`` until ``children`` are stopped; returns the base URL (``http://127.0.0.1:PORT``)."""
    prefix.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(_config(prefix, www, port, _temp_path_directives(nginx, prefix)))
    with (prefix / "stderr.log").open("wb") as stderr:
        proc = children.spawn(
            [nginx, "-p", f"{prefix}/", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=stderr
        )
    _wait_listening(proc, port, prefix)
    return f"http://127.0.0.1:{port}"
