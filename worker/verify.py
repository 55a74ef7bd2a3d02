"""``asset-worker verify``: re-read the stored files of done jobs and compare each with its receipt
(size and sha256), as ``rclone check`` compares two trees.

The core is pure: ``compare`` turns a receipt and what was found into a ``Check``; ``difference_line``,
``check_to_json`` and ``Tally`` say it. The edges read: each kind of destination brings its reader
(``SinkSpec.open_reader``: files on a thread, S3 objects by streamed GetObject), chosen per URI by
``Readers``; ``receipts`` walks the store. Nothing here writes: not the store, not a file,
not an object.

Memory stays flat however many files there are: jobs are read a page at a time, at most
``FILES_AT_ONCE`` files are read at once, and each is hashed in pieces (``readback.PIECE``). A file whose
size already differs is not read at all (as rclone does).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from worker.errors import ConfigError
from worker.models import Job, JobKey, JobState
from worker.sinks import sink_for
from worker.sinks.base import AnySinkSpec
from worker.sinks.readback import Absent, Found, Observation, Reader, Unreadable
from worker.store import Cursor, Store

# Files read at once: a disk or an S3 endpoint serves a few streams well; more only adds seeks.
FILES_AT_ONCE = 4
# Jobs read from the store per page (each with its assets).
JOBS_PAGE = 200


class Result(enum.StrEnum):
    OK = "ok"
    MISSING = "missing"
    SIZE_DIFFERS = "size_differs"
    SHA256_DIFFERS = "sha256_differs"
    UNREADABLE = "unreadable"


@dataclass(frozen=True, slots=True)
class Expected:
    """One stored file as its receipt describes it."""

    key: str
    asset_id: str
    uri: str
    size: int
    sha256: str




@dataclass(frozen=True, slots=True)
class Check:
    expected: Expected
    result: Result
    found_size: int | None = None
    found_sha256: str | None = None
    error: str | None = None
    bytes_read: int = 0


def compare(expected: Expected, observed: Observation) -> Check:
    """The verdict on one file (pure)."""
    match observed:
        case Absent():
            return Check(expected, Result.MISSING)
        case Unreadable(reason):
            return Check(expected, Result.UNREADABLE, error=reason)
        case Found(size, sha256, bytes_read):
            if size != expected.size:
                result = Result.SIZE_DIFFERS
            elif sha256 != expected.sha256:
                result = Result.SHA256_DIFFERS
            else:
                result = Result.OK
            return Check(expected, result, found_size=size, found_sha256=sha256, bytes_read=bytes_read)
    raise AssertionError(observed)  # pragma: no cover


_LABELS = {
    Result.MISSING: "missing",
    Result.SIZE_DIFFERS: "size differs",
    Result.SHA256_DIFFERS: "sha256 differs",
    Result.UNREADABLE: "unreadable",
}


def difference_line(check: Check) -> str:
    """``size differs: cloudlayer:x asset-1 at file:///... (receipt 2,000 bytes, found 1,000)``."""
    exp = check.expected
    head = f"{_LABELS[check.result]}: {exp.key} {exp.asset_id} at {exp.uri}"
    match check.result:
        case Result.SIZE_DIFFERS:
            return f"{head} (receipt {exp.size:,} bytes, found {check.found_size:,})"
        case Result.SHA256_DIFFERS:
            return f"{head} (receipt {exp.sha256[:12]}…, found {(check.found_sha256 or '')[:12]}…)"
        case Result.UNREADABLE:
            return f"{head} ({check.error})"
    return head


def check_to_json(check: Check) -> dict[str, Any]:
    exp = check.expected
    return {
        "key": exp.key,
        "asset_id": exp.asset_id,
        "uri": exp.uri,
        "result": check.result.value,
        "size": exp.size,
        "sha256": exp.sha256,
        "found_size": check.found_size,
        "found_sha256": check.found_sha256,
        "error": check.error,
    }


@dataclass(slots=True)
class Tally:
    files: int = 0
    bytes_read: int = 0
    differences: int = 0

    def add(self, check: Check) -> None:
        self.files += 1
        self.bytes_read += check.bytes_read
        self.differences += check.result is not Result.OK

    def line(self) -> str:
        plural = "" if self.differences == 1 else "s"
        return (
            f"checked {self.files:,} file{'' if self.files == 1 else 's'}, {self.bytes_read:,} bytes, "
            f"{self.differences:,} difference{plural}"
        )


def expected_files(job: Job) -> list[Expected]:
    """The receipts of a job's stored assets, in order."""
    return [
        Expected(str(job.key), a.ref.asset_id, a.receipt.uri, a.receipt.size, a.receipt.sha256)
        for a in job.assets
        if a.receipt is not None
    ]


# --- the edges: the store and the destinations' readers ----------------------------------------


class Readers:
    """The reader for each URI's kind of destination (its scheme, through the destination registry),
    opened on the first URI of that kind: checking files on disk never loads S3's client. A reader
    of the worker's own kind of destination gets its settings (an S3 endpoint, for instance)."""

    def __init__(self, dest_url: str, dest_settings: Any) -> None:
        self._dest_spec = sink_for(dest_url)
        self._dest_settings = dest_settings
        self._readers: dict[str, Reader] = {}
        self._lock = asyncio.Lock()
        self._stack = contextlib.AsyncExitStack()

    async def observe(self, uri: str, expected_size: int) -> Observation:
        try:
            spec = sink_for(uri)
        except ConfigError:
            spec = None
        if spec is None or spec.open_reader is None:
            return Unreadable(f"no reader for {uri.partition(':')[0].lower()!r} URIs")
        return await (await self._reader(spec, uri)).observe(uri, expected_size)

    async def _reader(self, spec: AnySinkSpec, uri: str) -> Reader:
        async with self._lock:
            reader = self._readers.get(spec.name)
            if reader is None:
                assert spec.open_reader is not None
                settings = self._dest_settings if spec is self._dest_spec else None
                reader = await self._stack.enter_async_context(spec.open_reader(settings, uri))
                self._readers[spec.name] = reader
            return reader

    async def close(self) -> None:
        await self._stack.aclose()


async def check_all(
    files: AsyncIterable[Expected], reader: Reader, *, at_once: int = FILES_AT_ONCE
) -> AsyncIterator[Check]:
    """Each file's check, in the order given, with up to ``at_once`` files read at a time."""

    async def one(expected: Expected) -> Check:
        return compare(expected, await reader.observe(expected.uri, expected.size))

    window: collections.deque[asyncio.Task[Check]] = collections.deque()
    try:
        async for expected in files:
            window.append(asyncio.create_task(one(expected)))
            if len(window) >= at_once:
                yield await window.popleft()
        while window:
            yield await window.popleft()
    finally:
        for task in window:
            task.cancel()
        if window:
            await asyncio.gather(*window, return_exceptions=True)


@dataclass(slots=True)
class Walk:
    """What walking the store found besides files: named jobs that are unknown or not done."""

    unknown: list[str]
    not_done: list[tuple[str, JobState]]


async def receipts(store: Store, keys: Sequence[JobKey], walk: Walk) -> AsyncIterator[Expected]:
    """The receipts of the named jobs (in the order named), or of every done job (oldest first),
    a page of jobs at a time. Named jobs that are unknown or not done are noted in ``walk``."""
    if keys:
        wanted = list(dict.fromkeys(keys))
        for start in range(0, len(wanted), JOBS_PAGE):
            batch = wanted[start : start + JOBS_PAGE]
            jobs = {str(j.key): j for j in await store.get(batch)}
            for key in map(str, batch):
                job = jobs.get(key)
                if job is None:
                    walk.unknown.append(key)
                elif job.state is not JobState.DONE:
                    walk.not_done.append((key, job.state))
                else:
                    for expected in expected_files(job):
                        yield expected
        return
    after: Cursor | None = None
    while page := await store.list_jobs(states=[JobState.DONE], limit=JOBS_PAGE, after=after):
        for job in page:
            for expected in expected_files(job):
                yield expected
        after = Cursor(submitted_at=page[-1].submitted_at, key=str(page[-1].key))
