"""A claimed job's lease as the code working on it sees it: a fencing token, progress, a fence check.

Every claim gets its own token (the store's ``lease_owner``), so a task that kept running after its
lease expired can never write over the progress of whoever holds the job now, even another task of
the same process. Progress decides renewal: a job is renewed while bytes flow, answers arrive, or it
is in a deliberate wait (a ``Retry-After``, a backoff); a job stuck on a silent socket is not, and
its lease runs out.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar

from worker.meter import TransferMeter

Sleep = Callable[[float], Awaitable[None]]


class Progress:
    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self.last = now()
        self._waits = 0

    def touch(self) -> None:
        """Something happened: a byte arrived, a poll was answered."""
        self.last = self._now()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """A deliberate wait: the job is alive although nothing moves."""
        self._waits += 1
        try:
            yield
        finally:
            self._waits -= 1
            self.touch()

    def alive(self, now: float, window_s: float) -> bool:
        return self._waits > 0 or now - self.last <= window_s


# The progress of the job the current task works on; HTTP retries deep in the call stack report
# their waits here without every layer passing it along.
current_progress: ContextVar[Progress | None] = ContextVar("current_progress", default=None)


async def deliberate_sleep(sleep: Sleep, seconds: float) -> None:
    """Sleep, telling the current job's lease that this wait is on purpose."""
    progress = current_progress.get()
    if progress is None:
        await sleep(seconds)
        return
    with progress.waiting():
        await sleep(seconds)


def new_token(worker_id: str) -> str:
    """A fencing token for one claim: readable (worker id first) and unique."""
    return f"{worker_id}/{secrets.token_hex(4)}"


class Lease:
    """What the engine needs of a claim: the token to write with, progress, and a fence check.

    ``meter`` is the download under way, if any: the engine sets it for each asset it fetches and
    the runner reports it (store, log, live display).
    """

    def __init__(self, token: str, progress: Progress, confirm: Callable[[], Awaitable[None]]) -> None:
        self.token = token
        self.progress = progress
        self._confirm = confirm
        self.meter: TransferMeter | None = None
        # Set when the job stops being this claim's (canceled, or taken over by another worker)
        # before its task is cancelled: nothing it leaves is worth keeping then. A task cancelled
        # without it is being drained, and leaves a part the next holder can resume.
        self.revoked = False

    def touch(self) -> None:
        self.progress.touch()

    async def confirm(self) -> None:
        """Renew now; raises ``LeaseLost`` if the job was taken over. Called right before an
        irreversible step (publishing a file) so a worker that lost its lease does not publish."""
        await self._confirm()
