"""Mutation testing of the modules that guard a byte: plant small bugs, see whether a test notices.

Usage (from the repository root, after ``pip install -e '.[test]'``)::

    .venv/bin/python tools/mutation.py                 # every guarded module (about 40 minutes on 2 cores)
    .venv/bin/python tools/mutation.py transfer digest # some of them
    .venv/bin/python tools/mutation.py --sample 12     # a seeded sample per module (what CI runs)

It copies ``worker/``, ``tests/`` and ``pyproject.toml`` into ``.mutation/work`` (so a run never
touches the checkout and two checkouts never share state), writes mutmut's configuration there for
the chosen modules, starts the real S3 server and PostgreSQL once for the whole run when a module's
tests need them, runs ``mutmut run`` and prints the score of each module. The report, with every
survivor, is written to ``.mutation/report.json``; ``cd .mutation/work && mutmut show NAME`` shows
the planted change.

A mutant counts as killed when a test failed, the test run timed out, or mypy (part of every CI run)
rejected it. "No tests" counts as survived: a line no fast test reaches is not guarded.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STATE_DIR = ROOT / ".mutation"
WORK_DIR = STATE_DIR / "work"
REPORT = STATE_DIR / "report.json"


def _use_state_dir(path: Path) -> None:
    """Keep this run's copy, log and report under ``path`` (two runs at once need two)."""
    global STATE_DIR, WORK_DIR, REPORT
    STATE_DIR, WORK_DIR, REPORT = path, path / "work", path / "report.json"


# Log statements say what happened to an operator; a planted bug in one never loses a byte, and
# their wording is pinned by the log tests, not by these module tests.
_LOG_CALL = r"^\s*log\.(debug|info|warning|error|exception)\("

_STORE_FENCING = (
    "claim", "renew", "release", "reschedule", "restart_polling", "mark_ready", "finish",
    "retry_later", "postpone", "update_asset", "record_receipt", "fail_asset", "find_stored",
    "_update_leased", "_check_leased", "_lease_lost", "_check_asset_exists", "_claim",
)  # fmt: skip


@dataclass(frozen=True)
class Module:
    """One guarded module: its files, the functions that count (all when empty), its fast tests."""

    name: str
    files: tuple[str, ...]
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()
    needs_s3: bool = False
    needs_postgres: bool = False

    def mutant_globs(self) -> list[str]:
        """mutmut names mutants ``pkg.module.x_function__mutmut_N`` and methods
        ``pkg.module.xǁClassǁmethod__mutmut_N``."""
        globs = []
        for path in self.files:
            dotted = path.removesuffix(".py").replace("/", ".")
            if not self.functions:
                globs.append(f"{dotted}.*")
                continue
            for function in self.functions:
                globs.append(f"{dotted}.x_{function}__mutmut_*")
                globs.append(f"{dotted}.xǁ*ǁ{function}__mutmut_*")
        return globs

    def owns(self, mutant: str) -> bool:
        return any(fnmatch.fnmatchcase(mutant, glob) for glob in self.mutant_globs())


MODULES: tuple[Module, ...] = (
    Module("digest", ("worker/digest.py",), ("tests/test_digest.py",)),
    Module("naming", ("worker/naming.py",), ("tests/test_naming.py",)),
    Module("policy", ("worker/policy.py",), ("tests/test_policy.py",)),
    Module("lease", ("worker/lease.py",), ("tests/test_lease.py",)),
    Module("transfer", ("worker/transfer.py",), ("tests/test_transfer.py", "tests/test_transfer_guards.py")),
    Module("sinks/file", ("worker/sinks/file.py",), ("tests/test_sink_file.py",)),
    Module(
        "sinks/s3",
        (
            "worker/sinks/s3_sink.py",
            "worker/sinks/s3_upload.py",
            "worker/sinks/s3_bucket.py",
            "worker/sinks/s3_errors.py",
            "worker/sinks/s3_parts.py",
        ),
        ("tests/test_sink_s3.py", "tests/test_sink_s3_guards.py"),
        needs_s3=True,
    ),
    Module(
        "store/sqlite fencing",
        ("worker/store/sqlite.py",),
        ("tests/test_store.py", "tests/test_store_fencing.py"),
        _STORE_FENCING,
        needs_postgres=True,  # the store contract tests run on both backends
    ),
    Module(
        "store/postgres fencing",
        ("worker/store/postgres_store.py",),
        ("tests/test_store.py", "tests/test_store_postgres.py", "tests/test_store_fencing.py"),
        _STORE_FENCING,
        needs_postgres=True,
    ),
    Module(
        "engine",
        ("worker/engine.py",),
        ("tests/test_worker.py", "tests/test_engine.py", "tests/test_worker_s3.py"),
        needs_s3=True,  # receipts of S3 copies (ETag, version id, already present)
    ),
)

_KILLED = {"killed", "timeout", "caught by type check"}


@dataclass
class ModuleScore:
    name: str
    total: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    survivors: list[str] = field(default_factory=list)

    @property
    def killed(self) -> int:
        return sum(count for status, count in self.statuses.items() if status in _KILLED)

    @property
    def score(self) -> float:
        return 100.0 * self.killed / self.total if self.total else 100.0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    _use_state_dir(args.state.resolve())
    chosen = _choose(args.modules)
    _prepare_workdir(chosen)
    globs = [glob for module in chosen for glob in module.mutant_globs()]
    with _servers(chosen) as server_env:
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {
            **os.environ,
            **server_env,
            "PATH": path,
            "PYTHONDONTWRITEBYTECODE": "1",
            "TEST_ASSET_WORKER_HYPOTHESIS_PROFILE": "mutation",
        }
        if args.sample:
            names = _sample(chosen, args.sample, args.seed, env)
            if not names:
                print("no mutants to sample", file=sys.stderr)
                return 2
        else:
            names = globs
        started = time.monotonic()
        code = _mutmut(["run", "--max-children", str(args.max_children), *names], env, quiet=args.quiet)
        elapsed = time.monotonic() - started
    if code != 0:
        log = STATE_DIR / "mutmut.log"
        print(f"mutmut run failed (exit {code}); its output is in {log}", file=sys.stderr)
        return code
    scores = _score(chosen, set(names) if args.sample else None)
    _print(scores, elapsed)
    REPORT.write_text(
        json.dumps(
            {
                "elapsed_s": round(elapsed, 1),
                "sample": args.sample,
                "modules": [{**asdict(s), "killed": s.killed, "score": round(s.score, 1)} for s in scores],
            },
            indent=2,
        )
    )
    below = [s for s in scores if s.score < args.fail_under]
    for score in below:
        print(f"{score.name}: {score.score:.1f}% killed, below {args.fail_under}%", file=sys.stderr)
    return 1 if below else 0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("modules", nargs="*", help=f"any of: {', '.join(m.name for m in MODULES)}")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--sample", type=int, default=0, help="test only this many mutants per module")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--fail-under", type=float, default=0.0, help="exit 1 if a module scores below this")
    parser.add_argument("--state", type=Path, default=STATE_DIR, help="where the copy and report go")
    parser.add_argument("--quiet", action="store_true", help="keep mutmut's progress out of the terminal")
    return parser.parse_args(argv)


def _choose(names: Sequence[str]) -> list[Module]:
    if not names:
        return list(MODULES)
    by_name = {m.name: m for m in MODULES} | {m.name.split()[0]: m for m in MODULES}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        known = ", ".join(m.name for m in MODULES)
        raise SystemExit(f"unknown module {', '.join(unknown)}; choose from: {known}")
    return list(dict.fromkeys(by_name[n] for n in names))


def _prepare_workdir(chosen: Sequence[Module]) -> None:
    """A fresh copy of the code and tests with mutmut's configuration for these modules."""
    if WORK_DIR.exists():
        shutil.rmtree(WORK_DIR)
    WORK_DIR.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for name in ("worker", "tests"):
        shutil.copytree(ROOT / name, WORK_DIR / name, ignore=ignore)
    pyproject = (ROOT / "pyproject.toml").read_text()
    files = sorted({f for m in chosen for f in m.files})
    tests = sorted({t for m in chosen for t in m.tests if (ROOT / t).exists()})
    config = [
        "",
        "[tool.mutmut]",
        'source_paths = ["worker"]',
        f"only_mutate = {json.dumps(files)}",
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        # No cache between mutants (each starts from the same state); a planted endless loop
        # ends with a failed test instead of the run's CPU limit; no pytest-xdist workers (mutmut
        # runs and forks pytest in its own process, where it records which test reached which code).
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "--timeout=60", "-n", "0"]',
        f"do_not_mutate_patterns = {json.dumps([_LOG_CALL])}",
        # A mutant that mypy --strict rejects could never be merged: CI type-checks every change.
        # (mutmut recognises mypy's report by the command's bare name; PATH leads to the venv's.)
        'type_check_command = ["mypy", "worker", "--no-warn-unused-ignores", "--output", "json"]',
        "use_git_change_detection = false",
        "",
    ]
    (WORK_DIR / "pyproject.toml").write_text(pyproject + "\n".join(config))


@contextlib.contextmanager
def _servers(chosen: Sequence[Module]) -> Iterator[dict[str, str]]:
    """One S3 server and one PostgreSQL for the whole run, handed to every test process through
    the variables the test fixtures read (tests/s3server.py, tests/pgserver.py)."""
    env: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if any(m.needs_s3 for m in chosen):
            from tests.s3server import EXTERNAL_S3_ENV, run_seaweedfs

            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mutation-s3-")))
            server = stack.enter_context(run_seaweedfs(workdir))
            env[EXTERNAL_S3_ENV] = json.dumps({**asdict(server), "log_path": str(server.log_path)})
        if any(m.needs_postgres for m in chosen):
            from tests.pgserver import run_postgres

            postgres = stack.enter_context(run_postgres())
            env["TEST_ASSET_WORKER_POSTGRES_URL"] = postgres.url()
        yield env


def _mutmut(args: Sequence[str], env: dict[str, str], *, quiet: bool) -> int:
    command = [_tool("mutmut"), *args]
    STATE_DIR.mkdir(exist_ok=True)
    with (STATE_DIR / "mutmut.log").open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 (mutmut of this environment, fixed arguments)
            command, cwd=WORK_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert process.stdout is not None
        while chunk := os.read(process.stdout.fileno(), 65536):
            log.write(chunk)
            if not quiet:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
        return process.wait()


def _tool(name: str) -> str:
    """A console script of this interpreter's environment (the venv need not be activated)."""
    return str(Path(sys.executable).parent / name)


def _sample(chosen: Sequence[Module], per_module: int, seed: int, env: dict[str, str]) -> list[str]:
    """Generate the mutants (without testing any), then pick a seeded sample of each module's."""
    code = _mutmut(["run", "--max-children", "1", "no-such-mutant"], env, quiet=True)
    del code  # mutmut exits non-zero for an unknown name; the mutants are generated all the same
    names = sorted(_exit_codes())
    rng = random.Random(seed)
    picked: list[str] = []
    for module in chosen:
        owned = [n for n in names if module.owns(n)]
        picked += rng.sample(owned, min(per_module, len(owned)))
    return picked


def _exit_codes() -> dict[str, int | None]:
    codes: dict[str, int | None] = {}
    for meta in (WORK_DIR / "mutants").rglob("*.py.meta"):
        codes |= json.loads(meta.read_text())["exit_code_by_key"]
    return codes


def _score(chosen: Sequence[Module], only: set[str] | None) -> list[ModuleScore]:
    from mutmut.stats import status_by_exit_code

    codes = _exit_codes()
    scores = []
    for module in chosen:
        score = ModuleScore(module.name)
        statuses: Counter[str] = Counter()
        for name, code in sorted(codes.items()):
            if not module.owns(name) or (only is not None and name not in only):
                continue
            status = status_by_exit_code[code]
            statuses[status] += 1
            score.total += 1
            if status not in _KILLED:
                score.survivors.append(f"{name} ({status})")
        score.statuses = dict(statuses)
        scores.append(score)
    return scores


def _print(scores: Sequence[ModuleScore], elapsed: float) -> None:
    print()
    print(f"{'module':<24} {'mutants':>7} {'killed':>7} {'by mypy':>7} {'survived':>8} {'score':>7}")
    for s in scores:
        by_mypy = s.statuses.get("caught by type check", 0)
        print(f"{s.name:<24} {s.total:>7} {s.killed:>7} {by_mypy:>7} {len(s.survivors):>8} {s.score:>6.1f}%")
    print(f"\n{elapsed / 60:.1f} min; survivors in {REPORT}")
    for s in scores:
        for survivor in s.survivors:
            print(f"  {survivor}")


if __name__ == "__main__":
    sys.exit(main())
