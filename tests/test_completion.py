"""Shell completion: the scripts ``asset-worker completion bash|zsh`` prints, run by real shells."""

from __future__ import annotations

import argparse
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.debian import program
from worker.cli import build_parser
from worker.completion import script


def completion_script(shell: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "completion", shell],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


# Sets COMP_WORDS/COMP_CWORD as bash does for a line ending at the cursor, calls the completion
# function, prints what it offers.
_BASH_DRIVER = """
complete_line() {
    COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=()
    _asset_worker
    echo "${COMPREPLY[*]}"
}
"""


def bash_complete(script_text: str, *lines: list[str]) -> list[str]:
    calls = "\n".join("complete_line " + " ".join(f"'{w}'" for w in words) for words in lines)
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", f"{script_text}\n{_BASH_DRIVER}\n{calls}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0 and not result.stderr, result.stderr
    return result.stdout.splitlines()


def test_bash_completes_commands_flags_and_their_values() -> None:
    """Sourced in a real bash: commands, each command's flags, --state and --log-format values, the
    shell of ``completion``, a global flag's value skipped to find the command."""
    text = completion_script("bash", ASSET_WORKER_CONCURRENCY="abc")  # settings are not read
    assert bash_complete(
        text,
        ["asset-worker", "st"],
        ["asset-worker", "status", "--st"],
        ["asset-worker", "status", "--state", "f"],
        ["asset-worker", "status", "--state", "=", "do"],
        ["asset-worker", "--store", "x.db", "ve"],
        ["asset-worker", "run", "--log-format", ""],
        ["asset-worker", "completion", ""],
        ["asset-worker", "verify", "--"],
    ) == [
        "status",
        "--store --state",
        "failed",
        "downloading done",
        "verify",
        "auto json console",
        "bash zsh",
        "--help --store --dest --log-level --log-format --json",
    ]


def test_the_scripts_follow_the_parser() -> None:
    """A command or flag added to the parser completes with no other change: the scripts are
    generated from it."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    extra = commands.add_parser("frobnicate")
    extra.add_argument("--colour", choices=["red", "blue"])
    text = script(parser, "bash")
    assert bash_complete(text, ["asset-worker", "frob"], ["asset-worker", "frobnicate", "--colour", ""]) == [
        "frobnicate",
        "red blue",
    ]
    assert "frobnicate:" in script(parser, "zsh") and "(red blue)" in script(parser, "zsh")


def zsh_complete(script_text: str, home: Path, lines: list[str]) -> list[str]:
    """Type each line and a Tab into an interactive zsh on a pseudo-terminal, with compinit and the
    script evaluated as the README says; a key bound to a widget records the line after completion."""
    (home / "completion.zsh").write_text(script_text)
    out = home / "buffers"
    (home / ".zshrc").write_text(
        "autoload -U compinit && compinit -u -D\n"
        f'eval "$(cat {home / "completion.zsh"})"\n'
        f'_record() {{ print -r -- "$BUFFER" >> {out}; BUFFER="" }}\n'
        "zle -N _record\nbindkey '^T' _record\nPROMPT='> '\n"
    )
    master, slave = pty.openpty()
    shell = subprocess.Popen(
        ["zsh", "-i"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "ZDOTDIR": str(home), "TERM": "dumb"},
        start_new_session=True,
    )
    os.close(slave)

    def drain(until: float) -> None:
        while time.monotonic() < until:
            if select.select([master], [], [], 0.05)[0]:
                try:
                    os.read(master, 65536)
                except OSError:
                    return

    try:
        drain(time.monotonic() + 1.0)
        for number, line in enumerate(lines, 1):
            os.write(master, line.encode() + b"\t")
            drain(time.monotonic() + 0.3)
            os.write(master, b"\x14")  # ^T: record the completed line
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (
                not out.exists() or len(out.read_text().splitlines()) < number
            ):
                drain(time.monotonic() + 0.1)
    finally:
        shell.kill()
        shell.wait()
        os.close(master)
    return out.read_text().splitlines() if out.exists() else []


def test_zsh_completes_commands_flags_and_their_values(tmp_path: Path) -> None:
    """In a real interactive zsh: a command, a flag (a unique one is inserted even where job keys
    may follow), --state and --log-format values, the shell of ``completion``. zsh is installed
    (Debian's ``zsh``) when missing, as CI machines start clean; where it cannot be, this fails."""
    if program("zsh", "zsh") is None:
        pytest.fail("zsh is not installed and cannot be installed here (needs root and apt-get)")
    text = completion_script("zsh")
    assert subprocess.run(["zsh", "-n"], input=text, text=True, timeout=30).returncode == 0
    assert zsh_complete(
        text,
        tmp_path,
        [
            "asset-worker st",
            "asset-worker status --sta",
            "asset-worker status --state fa",
            "asset-worker --log-format js",
            "asset-worker completion z",
        ],
    ) == [
        "asset-worker status ",
        "asset-worker status --state ",
        "asset-worker status --state failed ",
        "asset-worker --log-format json ",
        "asset-worker completion zsh ",
    ]
