"""Backoff schedules, Retry-After parsing, status classification and the speed floor (pure)."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.policy import (
    Backoff,
    SpeedFloor,
    is_expired_source_status,
    is_retryable_status,
    parse_retry_after,
)

NOW = 1_800_000_000.0


def test_backoff_grows_then_caps() -> None:
    """Without jitter the delays double from the initial value up to the cap."""
    backoff = Backoff(initial_s=2, max_s=30, multiplier=2, jitter=0)
    assert [backoff.delay(n, lambda: 0.5) for n in range(6)] == [2, 4, 8, 16, 30, 30]


@given(
    attempt=st.integers(min_value=0, max_value=10_000),
    r=st.floats(min_value=0, max_value=0.999999),
    initial=st.floats(min_value=0.01, max_value=10),
    spread=st.floats(min_value=1, max_value=100),
    multiplier=st.floats(min_value=1, max_value=10),
)
def test_backoff_stays_within_bounds(
    attempt: int, r: float, initial: float, spread: float, multiplier: float
) -> None:
    """Every delay lies between the initial delay and the cap, whatever the attempt and jitter."""
    backoff = Backoff(initial_s=initial, max_s=initial * spread, multiplier=multiplier, jitter=0.3)
    delay = backoff.delay(attempt, lambda: r)
    assert initial <= delay <= initial * spread


def test_backoff_jitter_spreads_capped_delays() -> None:
    """At the cap, jitter still varies the delay so many jobs do not poll in lock-step."""
    backoff = Backoff(initial_s=2, max_s=30, jitter=0.2)
    assert backoff.delay(20, lambda: 0.0) == 30
    assert backoff.delay(20, lambda: 0.99) == pytest.approx(30 * (1 - 0.2 * 0.99))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial_s": 0, "max_s": 1}, "initial_s"),
        ({"initial_s": 2, "max_s": 1}, "initial_s"),
        ({"initial_s": 1, "max_s": 2, "multiplier": 0.5}, "multiplier"),
        ({"initial_s": 1, "max_s": 2, "jitter": 1}, "jitter"),
    ],
)
def test_backoff_rejects_nonsense(kwargs: dict[str, float], message: str) -> None:
    """A schedule that could spin or never back off is refused at construction."""
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)


def test_retry_after_seconds_and_http_date() -> None:
    """Both forms of Retry-After give seconds from now."""
    assert parse_retry_after("7", now=NOW, max_s=60) == 7
    date = email.utils.formatdate(NOW + 12, usegmt=True)
    assert parse_retry_after(date, now=NOW, max_s=60) == pytest.approx(12)


def test_retry_after_is_clamped_and_tolerant() -> None:
    """Huge, negative, past and unparseable values never produce a wait outside [0, max]."""
    assert parse_retry_after("86400", now=NOW, max_s=120) == 120
    assert parse_retry_after("-5", now=NOW, max_s=120) == 0
    assert parse_retry_after(email.utils.formatdate(NOW - 100, usegmt=True), now=NOW, max_s=120) == 0
    for junk in (None, "", "soon", "nan", "Mon, 99 Foo 2020"):
        assert parse_retry_after(junk, now=NOW, max_s=120) is None


@given(st.text(max_size=60))
def test_retry_after_never_escapes_bounds(text: str) -> None:
    """Any header text yields None or a delay within [0, max_s]."""
    value = parse_retry_after(text, now=NOW, max_s=90)
    assert value is None or 0 <= value <= 90


def test_status_classification() -> None:
    """The SDKs' retryable statuses are retried; 403/404/410 from a file host mean a dead URL."""
    assert all(is_retryable_status(s) for s in (429, 500, 502, 503, 504))
    assert not any(is_retryable_status(s) for s in (400, 401, 403, 404, 422, 501))
    assert all(is_expired_source_status(s) for s in (403, 404, 410))
    assert not is_expired_source_status(401)


def test_backoff_grows_by_its_multiplier_from_the_first_retry() -> None:
    """Each delay is the previous one times the multiplier (until the cap): a schedule stuck at its
    initial value would hammer a struggling vendor."""
    backoff = Backoff(initial_s=0.5, max_s=1000, multiplier=3, jitter=0)
    assert [backoff.delay(n, lambda: 0.0) for n in range(5)] == [0.5, 1.5, 4.5, 13.5, 40.5]
    assert backoff.delay(-3, lambda: 0.0) == 0.5  # a negative attempt is the first one


def test_backoff_jitter_only_shortens_and_never_below_initial() -> None:
    """Jitter takes up to ``jitter`` of the delay off, in proportion to rand(), and the result
    never drops below the initial delay."""
    backoff = Backoff(initial_s=1, max_s=100, multiplier=2, jitter=0.5)
    assert backoff.delay(3, lambda: 0.0) == 8
    assert backoff.delay(3, lambda: 0.5) == 6  # 8 x (1 - 0.5 x 0.5)
    assert backoff.delay(3, lambda: 0.999) == pytest.approx(4.004)
    assert backoff.delay(0, lambda: 0.999) == 1  # 1 x 0.5 would be faster than the vendor allows


def test_backoff_exponent_stops_growing_at_1000() -> None:
    """Attempt counts past 1000 give attempt 1000's delay: the exponent is capped so a huge count
    neither overflows nor keeps creeping up."""
    backoff = Backoff(initial_s=1, max_s=1e9, multiplier=1.001, jitter=0)
    at_cap = backoff.delay(1000, lambda: 0.0)
    assert at_cap == pytest.approx(1.001**1000)
    assert backoff.delay(1001, lambda: 0.0) == at_cap
    assert backoff.delay(10**9, lambda: 0.0) == at_cap
    huge = Backoff(initial_s=1, max_s=60, multiplier=10, jitter=0)
    assert huge.delay(10**9, lambda: 0.0) == 60  # 10**1000 overflows a float: the cap holds


def test_backoff_accepts_the_edges_of_its_ranges() -> None:
    """initial_s == max_s, multiplier 1 and jitter 0 are valid (a constant schedule)."""
    backoff = Backoff(initial_s=5, max_s=5, multiplier=1, jitter=0)
    assert [backoff.delay(n, lambda: 0.5) for n in range(3)] == [5, 5, 5]
    with pytest.raises(ValueError, match="jitter"):
        Backoff(initial_s=1, max_s=2, jitter=-0.1)


def test_retry_after_forms_and_caps() -> None:
    """Seconds may be fractional and padded; an HTTP date counts from ``now``; both are capped at
    ``max_s``, a date exactly at the cap included; a date without a zone is refused."""
    assert parse_retry_after(" 1.5 ", now=NOW, max_s=60) == 1.5
    assert parse_retry_after("60", now=NOW, max_s=60) == 60
    assert parse_retry_after("61", now=NOW, max_s=60) == 60
    assert parse_retry_after("0", now=NOW, max_s=60) == 0
    assert parse_retry_after("inf", now=NOW, max_s=60) == 60
    at_cap = email.utils.formatdate(NOW + 60, usegmt=True)
    assert parse_retry_after(at_cap, now=NOW, max_s=60) == pytest.approx(60)
    far = email.utils.formatdate(NOW + 3600, usegmt=True)
    assert parse_retry_after(far, now=NOW, max_s=60) == 60
    offset = email.utils.formatdate(NOW + 30, localtime=False).replace("-0000", "+0000")
    assert parse_retry_after(offset, now=NOW, max_s=60) == pytest.approx(30)
    assert parse_retry_after("Fri, 15 Jan 2027 08:00:12 -0000", now=NOW, max_s=60) is None
    assert parse_retry_after("   ", now=NOW, max_s=60) is None


def test_every_status_is_classified() -> None:
    """Exactly 429, 500, 502, 503 and 504 are retried, and exactly 403, 404 and 410 mean a dead
    file URL: any other status from 100 to 599 is neither."""
    retryable = {s for s in range(100, 600) if is_retryable_status(s)}
    expired = {s for s in range(100, 600) if is_expired_source_status(s)}
    assert retryable == {429, 500, 502, 503, 504}
    assert expired == {403, 404, 410}


# -- the speed floor ------------------------------------------------------------------------


def test_speed_floor_quota_is_rate_times_window() -> None:
    """A window needs ``min_bps * window_s`` bytes, counted over every add: one byte short is a
    stall at the window's end, the full quota is not."""
    short = SpeedFloor(min_bps=50, window_s=4, now=100)
    short.add(150)
    short.add(49)
    assert short.check(now=104)
    enough = SpeedFloor(min_bps=50, window_s=4, now=100)
    enough.add(150)
    enough.add(50)
    assert not enough.check(now=104)


def test_speed_floor_decides_only_when_the_window_ends() -> None:
    """Before the deadline check says nothing, however little arrived; at the deadline it does."""
    floor = SpeedFloor(min_bps=100, window_s=10, now=0)
    assert floor.deadline() == 10
    assert not floor.check(now=9.999)
    assert floor.next_check(now=9.999) == 10
    assert floor.check(now=10)
    assert floor.check(now=10)  # a stall stays a stall: nothing is reset


def test_speed_floor_starts_the_next_window_when_checked() -> None:
    """A window that met its quota starts the next one at the moment of the check, with its count
    back at zero."""
    floor = SpeedFloor(min_bps=100, window_s=10, now=0)
    floor.add(5000)
    assert not floor.check(now=13)  # checked late: the next window runs from 13
    assert floor.deadline() == 23
    assert floor.next_check(now=13) == 23
    assert not floor.check(now=22.9)
    floor.add(999)
    assert floor.check(now=23)  # the 5000 of the first window do not carry over


def test_speed_floor_next_check_after_the_deadline_is_a_window_away() -> None:
    """Once the deadline has come (or passed), the next look is a whole window from now."""
    floor = SpeedFloor(min_bps=100, window_s=10, now=0)
    assert floor.next_check(now=10) == 20
    assert floor.next_check(now=15) == 25


def test_speed_floor_pause_stops_the_clock_until_resumed() -> None:
    """While paused nothing is a stall and the next look is a window away; resuming moves the
    deadline on by exactly the paused time; a second resume changes nothing."""
    floor = SpeedFloor(min_bps=100, window_s=10, now=1000)
    floor.pause(now=1004)
    assert not floor.check(now=1030)
    assert floor.next_check(now=1030) == 1040
    floor.resume(now=1030)  # 26 s on someone else's account
    assert floor.deadline() == 1036
    assert floor.next_check(now=1030) == 1036
    floor.resume(now=1035)
    assert floor.deadline() == 1036
    assert not floor.check(now=1035.9)
    assert floor.check(now=1036)


def test_speed_floor_resume_without_pause_changes_nothing() -> None:
    """A resume that follows no pause leaves the window where it was."""
    floor = SpeedFloor(min_bps=100, window_s=10, now=0)
    floor.resume(now=7)
    assert floor.deadline() == 10
    assert floor.check(now=10)


def test_speed_floor_of_one_byte_per_window_still_counts() -> None:
    """The smallest floor, one byte per window, is a floor: a window with no byte is a stall."""
    floor = SpeedFloor(min_bps=1, window_s=1, now=0)
    assert floor.deadline() == 1
    assert floor.check(now=1)


def test_speed_floor_zero_is_off() -> None:
    """min_bps 0 is no floor: no deadline, never a stall, and the next look is a window away."""
    off = SpeedFloor(min_bps=0, window_s=10, now=0)
    assert off.deadline() is None
    assert not off.check(now=1e9)
    assert off.next_check(now=5) == 15


def test_speed_floor_describes_itself_with_its_settings() -> None:
    """The stall message gives the rate and window and names the settings that control them."""
    floor = SpeedFloor(min_bps=2048, window_s=7.5, now=0)
    assert floor.describe() == (
        "slower than 2048 bytes/s for 7.5 s (ASSET_WORKER_MIN_SPEED_BPS, ASSET_WORKER_MIN_SPEED_WINDOW_S)"
    )
