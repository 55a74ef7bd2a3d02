"""Mirror mode's pure decisions: sources, the kind of walk, when an incremental walk stops, and
how soon a discovered item is due."""

from __future__ import annotations

import pytest

from worker.errors import ConfigError
from worker.mirror_plan import (
    FULL,
    INCREMENTAL,
    MirrorSource,
    due_at,
    may_stop,
    parse_source,
    parse_sources,
    walk_kind,
)
from worker.models import JobKey
from worker.providers.base import Listed
from worker.store.base import WalkRecord

DAY = 86400.0


def test_sources_name_a_provider_that_lists_and_a_scope_it_takes() -> None:
    assert parse_source(" Cloudlayer ") == MirrorSource("cloudlayer", "cloudlayer", "")
    assert parse_source("layers:prj_01HX") == MirrorSource("layers:prj_01HX", "layers", "prj_01HX")
    assert parse_sources("cloudlayer, layers:prj_1,,cloudlayer") == (
        MirrorSource("cloudlayer", "cloudlayer", ""),
        MirrorSource("layers:prj_1", "layers", "prj_1"),
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("dropbox", "no provider 'dropbox'"),
        ("layers", "layers:"),
        ("cloudlayer:acct_1", "whole account"),
    ],
)
def test_a_source_that_cannot_be_walked_is_one_clear_error(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_source(text)
    assert says in caught.value.message and "\n" not in caught.value.message


def _record(**fields: object) -> WalkRecord:
    base: dict[str, object] = dict(
        source="cloudlayer", kind=None, position=None, started_at=None, pages=0, last_full_walk_at=None,
        last_walk_at=None, newest_created_at=None, error=None, lease_owner=None, lease_expires_at=None,
    )  # fmt: skip
    base.update(fields)
    return WalkRecord(**base)  # type: ignore[arg-type]


def test_the_first_walk_is_full_then_incremental_until_a_full_one_is_due() -> None:
    assert walk_kind(_record(), now=1000.0, full_interval_s=DAY) == FULL
    walked = _record(last_full_walk_at=1000.0, last_walk_at=1000.0)
    assert walk_kind(walked, now=1000.0 + DAY - 1, full_interval_s=DAY) == INCREMENTAL
    assert walk_kind(walked, now=1000.0 + DAY, full_interval_s=DAY) == FULL
    # An interrupted walk is finished as what it was.
    assert (
        walk_kind(
            _record(kind=FULL, position="160", last_full_walk_at=1000.0), now=1001.0, full_interval_s=DAY
        )
        == FULL
    )


def _listed(created_at: float | None) -> Listed:
    return Listed(
        key=JobKey("cloudlayer", f"asset/a{created_at}"), item_id=f"a{created_at}", created_at=created_at
    )


def test_an_incremental_walk_stops_only_at_a_page_all_known_and_not_newer_than_known() -> None:
    page = [_listed(90.0), _listed(80.0)]
    assert may_stop(page, [False, False], newest_known=90.0)
    assert not may_stop(page, [False, True], newest_known=90.0)  # something new: go on
    assert not may_stop(page, [False, False], newest_known=85.0)  # newer than known: go on
    # Undated items (the vendor may leave the date out): a page of them all known is the sign.
    assert may_stop([_listed(None), _listed(None)], [False, False], newest_known=None)
    assert not may_stop([_listed(None)], [True], newest_known=None)
    assert not may_stop(page, [False, False], newest_known=None)  # nothing known yet
    assert not may_stop([], [], newest_known=90.0)


def test_items_near_the_vendors_retention_are_due_first_the_oldest_first() -> None:
    now = 100 * DAY
    retention = 30 * DAY
    assert due_at(now - 1 * DAY, now=now, retention_s=retention) == now  # plenty of time
    assert due_at(now - 23 * DAY, now=now, retention_s=retention) == now  # 7 days left: 23 %
    older, newer = now - 29 * DAY, now - 25 * DAY  # 1 and 5 days left
    assert due_at(older, now=now, retention_s=retention) < due_at(newer, now=now, retention_s=retention) < now
    assert due_at(now - 40 * DAY, now=now, retention_s=retention) < now  # past it: still tried, first
    assert due_at(None, now=now, retention_s=retention) == now
    assert due_at(now - 29 * DAY, now=now, retention_s=None) == now
