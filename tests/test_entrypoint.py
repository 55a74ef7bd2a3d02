"""The image's command line, as the Dockerfile defines it, starts a worker that answers /healthz.

No Docker here: the runtime stage's ENV, WORKDIR, ENTRYPOINT, CMD and STOPSIGNAL are read from
the Dockerfile and applied to a process on this machine, with the image's virtual environment
(``python -m venv <dir>`` in the build stage) replaced by this venv and its volume by a temp
directory. What this catches: an ENTRYPOINT/CMD that does not start the worker, an ENV the worker
rejects (exit 2 on an unknown ASSET_WORKER_* name), a default that does not serve HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

from tests.http_support import free_port, probe

DOCKERFILE = Path(__file__).resolve().parent.parent / "Dockerfile"


@dataclass
class Image:
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    stopsignal: str = "SIGTERM"
    volume: str = ""
    venv: str = ""


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines if " " in line]


def _expand(value: str, env: dict[str, str]) -> str:
    """``$VAR`` from the ENV set so far; unknown ones stay as they are (``$PATH``: the base image's)."""
    return re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), m.group(0)), value)


def read_image(text: str) -> Image:
    """The runtime (last) stage as Docker would run it; ENV values expand ``$VAR`` from earlier ENV."""
    instructions = _instructions(text)
    venv = re.search(r"python -m venv (\S+)", text)
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    image = Image(venv=venv.group(1) if venv else "")
    for name, args in instructions[last_from:]:
        if name == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                image.env[key] = _expand(value, image.env)
        elif name == "WORKDIR":
            image.workdir = args
        elif name in ("ENTRYPOINT", "CMD"):
            setattr(image, name.lower(), json.loads(args))  # exec form (the deploy tests require it)
        elif name == "STOPSIGNAL":
            image.stopsignal = args
        elif name == "VOLUME":
            (image.volume,) = json.loads(args)
    return image


async def test_the_image_command_serves_healthz(tmp_path: Path) -> None:
    image = read_image(DOCKERFILE.read_text())
    assert image.entrypoint + image.cmd, "the Dockerfile defines no command"
    assert image.venv and image.volume
    state = tmp_path / "state"
    state.mkdir()
    here = str(Path(sys.executable).parent)
    env = {}
    for key, value in image.env.items():
        # The image's venv is this venv; its volume a temp directory; its PATH extends this one.
        value = value.replace(f"{image.venv}/bin", here).replace(image.volume, str(state))
        env[key] = value.replace("$PATH", os.environ.get("PATH", ""))
    assert env["PATH"].startswith(here), "the image's PATH does not lead to its venv"
    port = free_port()
    env["ASSET_WORKER_LISTEN"] = f"127.0.0.1:{port}"
    workdir = image.workdir.replace(image.volume, str(state))
    log_path = tmp_path / "entrypoint.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *image.entrypoint,
            *image.cmd,
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        async with asyncio.timeout(30):
            while True:
                assert proc.returncode is None, "the worker exited; see entrypoint.log"
                try:
                    answer = await asyncio.to_thread(probe, f"http://127.0.0.1:{port}/healthz", 2)
                    break
                except urllib.error.URLError:  # not listening yet
                    await asyncio.sleep(0.05)
        assert answer == (200, {"status": "ok"})
        ready = await asyncio.to_thread(probe, f"http://127.0.0.1:{port}/readyz", 2)
        assert ready == (200, {"status": "ready"})
        # The image's defaults were applied: the store is on its volume.
        assert (state / "asset-worker.db").exists()
        proc.send_signal(signal.Signals[image.stopsignal])
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
