"""Backoff schedules and Retry-After parsing."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.policy import Backoff, is_expired_source_status, is_retryable_status, parse_retry_after

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
