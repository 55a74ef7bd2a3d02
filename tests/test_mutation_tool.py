"""The mutation job (tools/mutation.py) keeps working: a small seeded sample of mutants on every run.

The full job takes about half an hour and is run by hand (docs/testing.md); this sample proves the
set-up has not rotted: mutants are still generated for the guarded modules, the copied suite still
passes unmutated, and each sampled mutant is tested and gets a verdict.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.mutation import MODULES, Module

ROOT = Path(__file__).resolve().parent.parent
_SAMPLED = ("digest", "transfer", "sinks/file", "lease")
_PER_MODULE = 3
_VERDICTS = {"killed", "survived", "timeout", "caught by type check", "no tests"}


@pytest.mark.timeout(900)
def test_a_sample_of_mutants_is_generated_tested_and_scored(tmp_path: Path) -> None:
    """Every sampled mutant is run against its module's tests and gets a verdict; most die."""
    state = tmp_path / "mutation"
    result = subprocess.run(
        [sys.executable, "tools/mutation.py", "--quiet", "--state", str(state), "--sample", str(_PER_MODULE),
         "--seed", "7", *_SAMPLED],
        cwd=ROOT, capture_output=True, text=True, timeout=850, check=False,
    )  # fmt: skip
    log_path = state / "mutmut.log"
    log = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
    assert result.returncode == 0, result.stdout + result.stderr + log
    report = json.loads((state / "report.json").read_text())
    modules = {m["name"]: m for m in report["modules"]}
    assert sorted(modules) == sorted(_SAMPLED)
    for name, module in modules.items():
        assert module["total"] == _PER_MODULE, name
        assert set(module["statuses"]) <= _VERDICTS, (name, module["statuses"])
    killed = sum(m["killed"] for m in modules.values())
    assert killed >= len(_SAMPLED) * _PER_MODULE - 2, report


def test_function_limited_modules_own_only_their_functions() -> None:
    """The stores count only their fencing methods; other modules count every function."""
    fencing = next(m for m in MODULES if m.name == "store/sqlite fencing")
    assert fencing.owns("worker.store.sqlite.xǁSqliteStoreǁrecord_receipt__mutmut_3")
    assert fencing.owns("worker.store.sqlite.x__check_leased__mutmut_1")
    assert not fencing.owns("worker.store.sqlite.xǁSqliteStoreǁlist_jobs__mutmut_1")
    assert not fencing.owns("worker.store.postgres.xǁPostgresStoreǁrecord_receipt__mutmut_3")
    whole = Module("digest", ("worker/digest.py",), ())
    assert whole.owns("worker.digest.x_verify__mutmut_12")
    assert whole.owns("worker.digest.xǁDigestǁupdate__mutmut_1")
    assert not whole.owns("worker.digestion.x_verify__mutmut_12")
