"""Debian packages the tests need, installed the way CI machines need them: a clean machine, a root
shell with ``apt-get``. Elsewhere a missing program is reported, never silently skipped."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

# Test processes run in parallel (pytest-xdist), and apt-get refuses to run while another holds
# dpkg's lock: installs from this module take turns on a lock file of their own.
_INSTALL_LOCK = Path(tempfile.gettempdir()) / "asset-worker-tests-apt.lock"


def apt_install(package: str) -> bool:
    """Install ``package`` with apt-get when this is root and apt-get exists (``apt-get update``
    only if the first try fails); whether it was tried and succeeded."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    with _INSTALL_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if subprocess.run(install, env=env, capture_output=True, check=False).returncode == 0:
            return True
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        return subprocess.run(install, env=env, capture_output=True, check=False).returncode == 0


def program(name: str, package: str) -> str | None:
    """The path of ``name``, installing ``package`` first when it is missing; None if it cannot be."""
    found = shutil.which(name)
    if found is None and apt_install(package):
        found = shutil.which(name)
    return found
