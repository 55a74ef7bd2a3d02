"""The download meter and how progress reads in ``status`` and the status JSON (pure)."""

from __future__ import annotations

import pytest

from worker.meter import RATE_WINDOW_S, TransferMeter
from worker.models import AssetRecord, AssetRef, Job, JobKey, JobState, TransferProgress
from worker.statusview import (
    activity,
    human_bytes,
    human_duration,
    human_rate,
    job_to_json,
    render_table,
    shown_state,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_rate_is_over_the_last_window_so_a_stall_shows_within_it() -> None:
    clock = FakeClock()
    meter = TransferMeter("a1", clock)
    meter.start(100_000_000, 0)
    for _ in range(20):  # 20 s at 1 MB/s
        clock.now += 1
        meter.add(1_000_000)
        meter.snapshot()
    assert meter.snapshot().rate_bps == pytest.approx(1_000_000)
    for _ in range(int(RATE_WINDOW_S) + 1):  # then nothing arrives for a whole window
        clock.now += 1
        progress = meter.snapshot()
    assert progress.rate_bps == 0.0
    assert progress.bytes == 20_000_000 and progress.total == 100_000_000
    assert progress.eta_s is None  # no rate, no estimate


def test_bytes_resumed_from_an_earlier_attempt_count_as_held_but_not_as_speed() -> None:
    clock = FakeClock()
    meter = TransferMeter("a1", clock)
    clock.now += 5
    meter.start(10_000, 6_000)  # 6,000 bytes were already on disk
    assert meter.reused == 6_000
    clock.now += 2
    meter.add(1_000)
    progress = meter.snapshot()
    assert progress.bytes == 7_000
    assert progress.rate_bps == pytest.approx(500)  # 1,000 bytes in 2 s, not 7,000
    assert progress.eta_s == pytest.approx(6)


def test_a_resume_within_one_attempt_keeps_the_rate_and_a_restart_from_zero_resets_it() -> None:
    clock = FakeClock()
    meter = TransferMeter("a1", clock)
    meter.start(None, 0)
    clock.now += 4
    meter.add(4_000)
    meter.start(None, 4_000)  # the body broke off and the host resumed at the byte it stopped
    clock.now += 4
    meter.add(4_000)
    assert meter.snapshot().rate_bps == pytest.approx(1_000)
    meter.start(None, 0)  # the file changed: from zero
    assert meter.snapshot().bytes == 0
    clock.now += 1
    meter.add(300)
    assert meter.snapshot().rate_bps == pytest.approx(300)


def _downloading(now: float, *, lease_until: float | None, attempts: int = 1) -> Job:
    return Job(
        key=JobKey("cloudlayer", "j1"),
        state=JobState.DOWNLOADING,
        submitted_at=now - 100,
        updated_at=now - 10,
        due_at=now - 10,
        attempts=attempts,
        lease_owner="w/1" if lease_until is not None else None,
        lease_expires_at=lease_until,
        assets=(AssetRecord(ref=AssetRef(asset_id="a1", url="https://files.example/a1")),),
        progress=TransferProgress(
            asset_id="a1",
            bytes=3 << 30,
            total=4 << 30,
            rate_bps=100e6,
            started_at=now - 40,
            updated_at=now - 1,
        ),
    )


def test_a_running_download_shows_its_progress_in_the_table_and_the_json() -> None:
    now = 10_000.0
    job = _downloading(now, lease_until=now + 30)
    assert shown_state(job, now) == "downloading" and activity(job, now) == "running"
    table = render_table([job], now=now)
    assert "3 GiB/4 GiB 75%" in table
    assert "100 MB/s, 11 s left" in table
    asset = job_to_json(job, now)["assets"][0]
    assert asset["progress"] == {
        "bytes": 3 << 30,
        "total": 4 << 30,
        "rate_bps": 100_000_000,
        "eta_s": 10.7,
        "updated_at": "1970-01-01T02:46:39.000Z",
    }


def test_a_download_whose_worker_crashed_reads_retrying_without_progress() -> None:
    now = 10_000.0
    job = _downloading(now, lease_until=now - 5)  # the lease ran out with its owner recorded
    assert shown_state(job, now) == "retrying"
    assert activity(job, now) == "interrupted"
    status = job_to_json(job, now)
    assert status["state"] == "downloading"  # the stored phase: the documented contract
    assert status["assets"][0]["progress"] is None
    assert "GiB" not in render_table([job], now=now)


def test_a_job_ready_to_download_that_waits_for_a_slot_reads_queued() -> None:
    now = 10_000.0
    job = _downloading(now, lease_until=None, attempts=0)
    assert shown_state(job, now) == "queued" and activity(job, now) == "queued"
    handed_back = _downloading(now, lease_until=None, attempts=1)
    assert shown_state(handed_back, now) == "retrying"


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1 KiB"), (100 * 1024, "100 KiB"), (1500 << 20, "1.46 GiB")],
)
def test_human_bytes(count: int, text: str) -> None:
    assert human_bytes(count) == text


def test_human_rate_and_duration() -> None:
    assert human_rate(999) == "999 B/s"
    assert human_rate(118_400_000) == "118 MB/s"
    assert human_duration(42.4) == "42 s"
    assert human_duration(425) == "7 min 05 s"
    assert human_duration(7380) == "2 h 03 min"


def test_the_live_board_fits_the_terminal_and_shows_each_download() -> None:
    from rich.console import Console

    from worker.live import MAX_ROWS, Board, render

    progress = TransferProgress(
        asset_id="a1", bytes=1 << 30, total=4 << 30, rate_bps=118e6, started_at=0.0, updated_at=9.0
    )
    unknown = TransferProgress(
        asset_id="a2", bytes=5 << 20, total=None, rate_bps=0.0, started_at=0.0, updated_at=9.0
    )
    board = Board(
        transfers=[("cloudlayer:" + "x" * 60, progress), ("layers:cnt_1", unknown)] * (MAX_ROWS // 2 + 1),
        counts={"done": 3, "failed": 1, "downloading": 12, "queued": 0},
    )
    console = Console(width=80, record=True, force_terminal=False, color_system=None)
    console.print(render(board, width=80))
    text = console.export_text()
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), text
    assert lines[0] == "3 done · 1 failed · 12 downloading"
    assert "1 GiB/4 GiB" in text and "25%" in text and "118 MB/s" in text and "ETA 27 s" in text
    assert "5 MiB/?" in text
    assert "... and 2 more downloads" in text
    assert sum("GiB" in line or "MiB" in line for line in lines) == MAX_ROWS
