"""Mirror mode where it is easy to get wrong, each case one that once failed: resumed incremental
walks, vendor nonsense in a listing, an alias job that copied nothing, undated accounts."""

from __future__ import annotations

import asyncio

from tests.conftest import SettingsFactory
from tests.mirror_support import SOURCE, asset_key, mirroring
from worker.app import Worker, open_worker
from worker.mirror_view import source_to_json
from worker.models import JobKey, JobState
from worker.simulator.app import Simulator


async def job_keys(worker: Worker) -> set[str]:
    return {str(j.key) for j in await worker.store.list_jobs()}


async def test_a_resumed_incremental_walk_does_not_stop_before_the_new_items(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """An incremental walk that fails after its first page (150 new assets, 100 of them on that
    page) is resumed at the next round. It must still reach the other 50 new assets. Before the fix the
    interrupted walk's save_walk already raised newest_created_at to the newest new asset, the
    resumed walk takes that as ``newest_known``, re-reads page 1 (all known, all <= the raised
    mark) and stops: 50 new assets are missed until the next full walk (a day later)."""
    sim.add_cloudlayer_assets(1000, size=64)
    async with open_worker(mirroring(make_settings())) as worker:
        (full,) = await worker.mirror.walk_all(SOURCE)
        assert full.completed and full.kind == "full"
        new = sim.add_cloudlayer_assets(150, size=64, start_age_s=5, spacing_s=0.01)
        # The incremental walk's second list read is not the documented shape: the walk fails there.
        sim.add_fault(route="cloudlayer.assets", kind="malformed", body={"oops": 1}, count=1, after=1)
        (broken,) = await worker.mirror.walk_all(SOURCE)
        assert (broken.kind, broken.completed, broken.pages) == ("incremental", False, 1)
        (resumed,) = await worker.mirror.walk_all(SOURCE)
        assert resumed.completed and resumed.kind == "incremental"
        await worker.mirror.walk_all(SOURCE)  # and the next rounds do not find them either
        keys = await job_keys(worker)
    missing = [a.asset_id for a in new if str(asset_key(a.asset_id)) not in keys]
    assert missing == [], f"{len(missing)} of 150 new assets never became jobs"


async def test_a_resumed_incremental_layers_walk_does_not_stop_before_the_new_containers(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """The same on Layers: 300 new completed containers, the incremental walk fails on its second
    page; the resumed walk's ``since`` is built from the raised mark (its saved cursor, bound to the
    old ``since``, is refused and it restarts at the top), page 1 is all known, and it stops."""
    sim.add_layers_containers("prj_r", 400, status="completed", start_age_s=3 * 86400, spacing_s=60)
    settings = mirroring(make_settings(), "layers:prj_r")
    sources = settings.mirror.sources
    async with open_worker(settings) as worker:
        (full,) = await worker.mirror.walk_all(sources)
        assert full.completed and full.created == 400
        new = sim.add_layers_containers("prj_r", 300, status="completed", start_age_s=400, spacing_s=1)
        sim.add_fault(route="layers.project_content", kind="malformed", text="[]", count=1, after=1)
        (broken,) = await worker.mirror.walk_all(sources)
        assert (broken.kind, broken.completed, broken.pages) == ("incremental", False, 1)
        (resumed,) = await worker.mirror.walk_all(sources)
        assert resumed.completed
        await worker.mirror.walk_all(sources)
        keys = await job_keys(worker)
    missing = [c.id for c in new if str(JobKey("layers", c.id)) not in keys]
    assert missing == [], f"{len(missing)} of 300 new containers never became jobs"


async def test_one_sources_unreadable_item_does_not_take_the_other_sources_down(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """A cloudlayer list item whose ``timestamp`` is an integer too large for a float: an optional
    field the walk reads as absent (it once raised OverflowError out of walk_all, and the Layers
    source after it was never walked). Both sources are walked; the item is found, undated."""
    sim.add_layers_containers("prj_ok", 5, status="completed")
    sim.add_fault(
        route="cloudlayer.assets",
        kind="malformed",
        text='[{"id": "ast_big", "url": "http://x/y.pdf", "timestamp": 1' + "0" * 400 + "}]",
        count=1,
    )
    settings = mirroring(make_settings(), "cloudlayer,layers:prj_ok")
    async with open_worker(settings) as worker:
        try:
            outcomes = await worker.mirror.walk_all(settings.mirror.sources)
        except Exception as exc:  # as it once did
            raise AssertionError(f"walk_all raised {type(exc).__name__}: {exc}") from exc
        failures = dict(worker.mirror.failures)
        (found,) = await worker.store.get([JobKey("cloudlayer", "asset/ast_big")])
    assert failures == {}
    assert [o.source for o in outcomes if o.completed] == ["cloudlayer", "layers:prj_ok"]
    assert found.state is JobState.DOWNLOADING


async def test_an_asset_whose_hand_submitted_job_was_canceled_is_still_mirrored_or_shown_uncopied(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """A user submitted ``cloudlayer:job-7`` (the job that produced asset ast_7) and canceled it
    before it downloaded anything. The mirror then lists ast_7: submit_discovered sees the alias
    job (any state counts) and creates nothing, so ast_7 is never copied, and since the skipped
    item has no job tagged with the source, ``mirror --status`` counts it nowhere: copied 5,
    pending 0, failed 0, no oldest uncopied item. The retention alert can never fire for it."""
    sim.add_cloudlayer_job(id="job-7", asset_id="ast_7", pending_s=0, size=3000)
    sim.add_cloudlayer_assets(5, size=64)
    async with open_worker(mirroring(make_settings())) as worker:
        now = worker.clock.now()
        await worker.store.submit(JobKey("cloudlayer", "job-7"), now=now)
        await worker.store.cancel(JobKey("cloudlayer", "job-7"), now=now)
        (walk,) = await worker.mirror.walk_all(SOURCE)
        assert walk.items == 6  # ast_7 is listed
        await asyncio.wait_for(worker.runner.run(stop=asyncio.Event(), until_idle=True), 60)
        records = {r.source: r for r in await worker.store.walks()}
        counts = await worker.store.source_counts()
        row = source_to_json(
            "cloudlayer", records["cloudlayer"], counts["cloudlayer"], now=worker.clock.now()
        )
    copied_ast_7 = any("ast_7" in r.path and r.status == 200 for r in sim.requests("files"))
    shown_uncopied = row["pending"] + row["failed"] > 0 or row["oldest_uncopied_created_at"] is not None
    assert copied_ast_7 or shown_uncopied, (
        f"ast_7 neither copied nor shown: copied={row['copied']} pending={row['pending']} "
        f"failed={row['failed']} oldest_uncopied={row['oldest_uncopied_created_at']}"
    )


async def test_an_incremental_walk_with_nothing_new_is_one_read_when_the_account_has_no_timestamps(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """docs/mirror.md: "with nothing new, that is one read". The contract says cloudlayer's
    ``timestamp`` "may be absent". Without timestamps ``newest_created_at`` stays None and
    may_stop() never lets an incremental walk stop: every round (5 minutes) re-reads the whole
    account, 13 reads for 1,000 assets, 38 for 3,000."""
    sim.add_cloudlayer_assets(1000, size=16, timestamp_style="absent")
    async with open_worker(mirroring(make_settings())) as worker:
        (full,) = await worker.mirror.walk_all(SOURCE)
        assert full.completed and full.created == 1000
        reads = len(sim.requests("cloudlayer.assets"))
        (again,) = await worker.mirror.walk_all(SOURCE)
        extra = len(sim.requests("cloudlayer.assets")) - reads
    assert (again.kind, again.created) == ("incremental", 0)
    assert extra == 1, f"an incremental walk with nothing new read {extra} pages"


async def test_mirror_status_survives_an_item_with_an_absurd_timestamp(
    sim: Simulator, make_settings: SettingsFactory
) -> None:
    """One listed asset says ``"timestamp": 100000000000000000`` (a year far past 9999 once read as
    ms). parse_timestamp accepts it (1e14 s), the walk stores it as newest_created_at and the
    job's origin_created_at, and ``mirror --status`` (source_to_json -> iso ->
    datetime.fromtimestamp) then raises for every later call: the status command is dead."""
    sim.add_fault(
        route="cloudlayer.assets",
        kind="malformed",
        text='[{"id": "ast_far", "url": "http://127.0.0.1:1/x.pdf", "timestamp": 100000000000000000}]',
        count=1,
    )
    async with open_worker(mirroring(make_settings())) as worker:
        await worker.mirror.walk_all(SOURCE)
        records = {r.source: r for r in await worker.store.walks()}
        counts = await worker.store.source_counts()
        now = worker.clock.now()
    try:
        row = source_to_json("cloudlayer", records["cloudlayer"], counts.get("cloudlayer"), now=now)
    except (ValueError, OverflowError) as exc:
        raise AssertionError(f"mirror --status raises {type(exc).__name__}: {exc}") from exc
    assert row["source"] == "cloudlayer"
