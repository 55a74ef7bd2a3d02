"""The README and the pages under docs/ stay true to the code they document, and to each other."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from worker import config
from worker.httpclient import default_error_reader
from worker.providers import layers
from worker.sinks import s3_errors

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
STATUS = DOCS / "status.md"
WORKER = ROOT / "worker"

# Codes of the exception tree that never reach a job's or an asset's error in the status JSON.
NEVER_IN_STATUS = {
    "config_error": "raised at start, before any job is touched: the command exits 2",
    "lease_lost": "the worker that lost a lease stops; its successor records the outcome",
    "store_unavailable": "the store could not record anything; the job is retried later",
    "store_unusable": "the command stops; nothing can be recorded",
    "asset_set_changed": "the job is resolved again from the vendor's new set of files",
    "transfer_error": "a base class: what is raised is one of its subclasses",
    "storage_error": "a base class: what is raised is one of its subclasses",
    "worker_error": "a base class: what is raised is one of its subclasses",
}

# Fenced code blocks and inline code spans: neither holds links or headings.
_FENCED = re.compile(r"^```.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
# [text](target) or [text](target "title"); the text may wrap onto the next line.
_LINK = re.compile(r"\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


def known_variables() -> set[str]:
    """The ``ASSET_WORKER_*`` names the code accepts (each provider and destination declares its own)."""
    return set(config.known_variables())


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _prose(text: str) -> str:
    """The text without its code, where a bracket or a ``#`` means nothing."""
    return _CODE_SPAN.sub("", _FENCED.sub("", text))


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower-case, punctuation other than '-' and '_' dropped,
    spaces turned into '-'."""
    kept = "".join(c for c in heading.lower() if c.isalnum() or c in "-_ ")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor a page's headings give, with GitHub's -1, -2 ... for repeated headings."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for heading in _HEADING.findall(_FENCED.sub("", page.read_text())):
        anchor = github_anchor(heading)
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    """Every link target on the page that is not a URL with a scheme (http:, https:, mailto: ...)."""
    targets = _LINK.findall(_prose(page.read_text()))
    return [t for t in targets if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", t)]


def test_github_anchor_rule() -> None:
    assert github_anchor("Many replicas: the PostgreSQL store") == "many-replicas-the-postgresql-store"
    assert github_anchor("Store, leases and restarts") == "store-leases-and-restarts"
    assert github_anchor("`status --json` (a contract)") == "status---json-a-contract"
    assert github_anchor("ASSET_WORKER_S3_* and more") == "asset_worker_s3_-and-more"


def test_configuration_table_lists_every_variable() -> None:
    """Every ASSET_WORKER_* variable the code accepts is in the configuration tables, and no other."""
    text = CONFIGURATION.read_text()
    documented = set(re.findall(r"^\| `(ASSET_WORKER_[A-Z0-9_]+)` \|", text, re.MULTILINE))
    assert documented == known_variables()


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run runs exactly the test command the README gives."""
    commands = re.findall(r"^```\n(.+)\n```", README.read_text(), re.MULTILINE)
    ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert commands[1] == ci


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_somewhere(page: Path) -> None:
    """Every relative link names a file that exists, and every #anchor on a link to a Markdown page
    (or within the page) names one of that page's headings."""
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor} in {resolved.relative_to(ROOT)}")
    assert not broken, broken


def test_readme_links_every_docs_page() -> None:
    """Nothing under docs/ is reachable only by chance: the README links every page."""
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in relative_links(README)}
    assert not [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]


def test_readme_stays_short() -> None:
    """The README is the way in, a few screens long; the reference lives under docs/."""
    assert len(README.read_bytes()) < 12_000


def _codes_in_code() -> set[str]:
    """Every error code the worker's own code can put into a job or an asset: literal ``code=``
    arguments, ``JobError``/``Failed`` codes and the exception tree's class codes (outside the HTTP
    API, whose codes are its own table, and the simulator), plus the codes the vendor and S3
    translation tables map to."""
    codes: set[str] = set()
    for path in WORKER.rglob("*.py"):
        if path.relative_to(WORKER).as_posix().startswith(("http/", "simulator/")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "code" and isinstance(node.value, ast.Constant):
                codes.add(str(node.value.value))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args:
                first = node.args[0]
                if node.func.id in ("JobError", "Failed") and isinstance(first, ast.Constant):
                    codes.add(str(first.value))
            elif isinstance(node, ast.ClassDef):
                for statement in node.body:
                    if (
                        isinstance(statement, ast.Assign)
                        and [getattr(t, "id", None) for t in statement.targets] == ["code"]
                        and isinstance(statement.value, ast.Constant)
                    ):
                        codes.add(str(statement.value.value))
    codes |= {default_error_reader(status, b"")[0] for status in (400, 401, 403, 404, 409)}
    codes |= {layers.read_error(status, b"")[0] for status in (400, 401, 403, 404, 409, 422, 429, 500, 503)}
    for table in (s3_errors._REJECTED, s3_errors._INTERRUPTED, s3_errors._UNAVAILABLE):
        codes |= set(table.values())
    return codes - set(NEVER_IN_STATUS)


def _documented_codes() -> set[str]:
    """The codes in the first column of docs/status.md's error table."""
    rows = re.findall(r"^\| (`[a-z0-9_]+`(?:, `[a-z0-9_]+`)*)[^|]* \|", STATUS.read_text(), re.MULTILINE)
    return {code for row in rows for code in re.findall(r"`([a-z0-9_]+)`", row)}


def test_every_error_code_the_worker_can_record_is_documented() -> None:
    """Each code a job or an asset can end with has a row (what it means, what happens) in the
    status page's table, and the table names no code the worker cannot produce."""
    in_code, documented = _codes_in_code(), _documented_codes()
    assert sorted(in_code - documented) == []
    assert sorted(documented - in_code) == []
