"""The live progress display of ``run`` and ``submit --wait`` on a terminal (rich).

What it shows comes from a ``Board``, fetched a few times a second by the command: ``run`` reads
its own runner's meters, ``submit --wait`` reads the store (so it shows a download whatever
replica does it). Rendering a board is pure (:func:`render`); :func:`show_live` is the loop that
fetches and redraws until told to stop. Log lines keep scrolling above the display: rich's
``Live`` takes over ``sys.stdout`` while it runs, and the log writes to whatever ``sys.stdout`` is
at the moment (``worker.log``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from worker.errors import WorkerError, describe
from worker.models import TransferProgress
from worker.statusview import human_bytes, human_duration, human_rate

log = structlog.get_logger("worker.live")

# Redraws per second: often enough to look alive, rarely enough to cost nothing.
REFRESH_PER_S = 4.0
# Downloads shown at once; the rest are counted on one line.
MAX_ROWS = 10


@dataclass(frozen=True, slots=True)
class Board:
    """One moment of the work: downloads under way (job key, progress) and jobs counted by how
    they stand (``done``, ``failed``, ``queued``...), in the order they should be read."""

    transfers: Sequence[tuple[str, TransferProgress]] = ()
    counts: Mapping[str, int] = field(default_factory=dict)


def render(board: Board, *, width: int) -> RenderableType:
    """The display of one board for a terminal ``width`` columns wide."""
    summary = " · ".join(f"{n} {state}" for state, n in board.counts.items() if n) or "nothing to do"
    if not board.transfers:
        return Text(summary, style="bold")
    table = Table.grid(padding=(0, 1))
    key_width = max(12, min(40, width - 62))
    table.add_column(no_wrap=True, max_width=key_width, overflow="ellipsis")
    table.add_column(no_wrap=True)  # bar
    table.add_column(no_wrap=True, justify="right")  # bytes
    table.add_column(no_wrap=True, justify="right")  # percent
    table.add_column(no_wrap=True, justify="right")  # rate
    table.add_column(no_wrap=True)  # time left
    for key, progress in list(board.transfers)[:MAX_ROWS]:
        table.add_row(*_cells(key, progress))
    hidden = len(board.transfers) - MAX_ROWS
    parts: list[RenderableType] = [Text(summary, style="bold"), table]
    if hidden > 0:
        parts.append(Text(f"... and {hidden} more downloads"))
    return Group(*parts)


def _cells(key: str, progress: TransferProgress) -> tuple[RenderableType, ...]:
    total = progress.total
    bar = ProgressBar(total=float(total) if total else None, completed=float(progress.bytes), width=20)
    held = f"{human_bytes(progress.bytes)}/{human_bytes(total) if total else '?'}"
    percent = f"{100 * progress.bytes // total}%" if total else ""
    eta = progress.eta_s
    left = f"ETA {human_duration(eta)}" if eta is not None else ""
    return (Text(key), bar, Text(held), Text(percent), Text(human_rate(progress.rate_bps)), Text(left))


@contextlib.asynccontextmanager
async def live_display(
    fetch: Callable[[], Awaitable[Board]], *, enabled: bool, console: Console | None = None
) -> AsyncIterator[None]:
    """Show ``fetch()``'s board while the block runs (when ``enabled``: on a terminal); the last
    board stays on screen after it."""
    if not enabled:
        yield
        return
    stop = asyncio.Event()
    task = asyncio.create_task(show_live(fetch, stop=stop, console=console))
    try:
        yield
    finally:
        stop.set()
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.cancel()
            raise


async def show_live(
    fetch: Callable[[], Awaitable[Board]], *, stop: asyncio.Event, console: Console | None = None
) -> None:
    """Redraw ``fetch()``'s board ``REFRESH_PER_S`` times a second until ``stop`` is set; the last
    board stays on screen. A fetch that fails (a store busy for a moment) keeps the last board."""
    console = console or Console()
    board = Board()
    failed = False
    with Live(
        render(board, width=console.width),
        console=console,
        auto_refresh=False,
        transient=False,
        redirect_stdout=True,
        redirect_stderr=True,
    ) as live:
        while True:
            try:
                board = await fetch()
            except WorkerError:
                pass  # the store busy for a moment: the last board stays
            except Exception as exc:
                # A display must not stop the work it shows; say so once, and keep the last board.
                if not failed:
                    log.exception("live_display_failed", error=describe(exc))
                failed = True
            live.update(render(board, width=console.width), refresh=True)
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1 / REFRESH_PER_S)
