"""Pure parts of the simulator: deterministic content, fault-rule parsing and matching."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.simulator.content import BLOCK_SIZE, content_bytes, content_sha256, iter_content
from worker.simulator.faults import FaultBook
from worker.simulator.specs import SpecError

seeds = st.integers(min_value=-(2**70), max_value=2**70)


@settings(max_examples=150, deadline=None)
@given(
    seed=seeds,
    size=st.integers(min_value=0, max_value=3 * BLOCK_SIZE + 100),
    data=st.data(),
    chunk_size=st.integers(min_value=1, max_value=2 * BLOCK_SIZE + 7),
)
def test_iter_content_from_any_start_equals_the_whole_content_sliced(
    seed: int, size: int, data: st.DataObject, chunk_size: int
) -> None:
    """Streaming from any offset in any chunk size yields exactly the suffix of the one-shot content."""
    start = data.draw(st.integers(min_value=0, max_value=size), label="start")
    chunks = list(iter_content(seed, size, start, chunk_size))
    assert b"".join(chunks) == content_bytes(seed, size)[start:]
    assert all(0 < len(chunk) <= chunk_size for chunk in chunks)


@settings(max_examples=50, deadline=None)
@given(seed=seeds, small=st.integers(min_value=0, max_value=2 * BLOCK_SIZE), extra=st.integers(0, BLOCK_SIZE))
def test_shorter_content_is_a_prefix_of_longer_content(seed: int, small: int, extra: int) -> None:
    """Byte i depends only on (seed, i): the file host relies on it for ranges and short bodies."""
    assert content_bytes(seed, small + extra)[:small] == content_bytes(seed, small)


def test_content_is_deterministic_and_seed_dependent() -> None:
    """The same seed gives the same bytes; another seed gives others."""
    assert content_bytes(7, 100_000) == content_bytes(7, 100_000)
    assert content_bytes(7, 100_000) != content_bytes(8, 100_000)


def test_content_is_not_periodic_across_blocks() -> None:
    """Every block differs, so a duplicated or skipped block changes the sha256."""
    data = content_bytes(3, 8 * BLOCK_SIZE)
    blocks = [data[i : i + BLOCK_SIZE] for i in range(0, len(data), BLOCK_SIZE)]
    assert len(set(blocks)) == len(blocks)
    duplicated = b"".join(blocks[:4] + blocks[3:7])
    assert len(duplicated) == len(data)
    assert hashlib.sha256(duplicated).hexdigest() != content_sha256(3, len(data))


def test_content_sha256_matches_hashlib_of_the_bytes() -> None:
    """content_sha256 is the sha256 of content_bytes, including the empty file."""
    for size in (0, 1, BLOCK_SIZE, 5 * BLOCK_SIZE + 3):
        assert content_sha256(11, size) == hashlib.sha256(content_bytes(11, size)).hexdigest()


@pytest.mark.parametrize(("size", "start", "chunk"), [(-1, 0, 1), (10, 11, 1), (10, -1, 1), (10, 0, 0)])
def test_iter_content_rejects_bad_arguments(size: int, start: int, chunk: int) -> None:
    """Negative sizes, out-of-range starts and empty chunks are programming errors."""
    with pytest.raises(ValueError):
        list(iter_content(1, size, start, chunk))


def test_count_rule_fires_for_the_next_n_matching_requests_only() -> None:
    """A count rule hits exactly N matching requests, then disappears."""
    book = FaultBook()
    rule = book.add(
        {"route": "cloudlayer.job", "kind": "status", "status": 503, "count": 2, "match": "job_a"}
    )
    assert book.pick("cloudlayer.job", ("/v2/jobs/job_b",), file_host=False) is None
    assert book.pick("cloudlayer.asset", ("/v2/assets/job_a",), file_host=False) is None
    assert book.pick("cloudlayer.job", ("/v2/jobs/job_a",), file_host=False) is rule
    assert book.pick("cloudlayer.job", ("/v2/jobs/job_a",), file_host=False) is rule
    assert book.pick("cloudlayer.job", ("/v2/jobs/job_a",), file_host=False) is None
    assert rule.fired == 2
    assert book.rules() == []


def test_file_kinds_never_hit_api_routes() -> None:
    """A wildcard truncate rule skips API requests without spending its count."""
    book = FaultBook()
    rule = book.add({"route": "*", "kind": "truncate"})
    assert book.pick("cloudlayer.job", ("/v2/jobs/x",), file_host=False) is None
    assert book.pick("files", ("/files/x.pdf",), file_host=True) is rule


def test_route_family_pattern_matches_every_route_of_the_family() -> None:
    """ "cloudlayer.*" covers every cloudlayer route and nothing else."""
    book = FaultBook()
    book.add({"route": "cloudlayer.*", "kind": "reset", "count": 5})
    assert book.pick("files", ("/files/a.pdf",), file_host=True) is None
    assert book.pick("cloudlayer.asset", ("/v1/assets/a",), file_host=False) is not None


def test_probability_rule_is_reproducible_with_its_seed() -> None:
    """Two books with the same seeded rule hit the same requests; the rate is roughly p."""

    def pattern() -> list[bool]:
        book = FaultBook()
        book.add({"route": "files", "kind": "status", "probability": 0.3, "seed": 42})
        return [book.pick("files", ("/files/a.pdf",), file_host=True) is not None for _ in range(400)]

    first = pattern()
    assert first == pattern()
    assert 60 < sum(first) < 180


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "explode"},
        {},
        {"kind": "status", "status": 200},
        {"kind": "status", "status": 700},
        {"kind": "status", "count": 0},
        {"kind": "status", "count": 2, "probability": 0.5},
        {"kind": "status", "probability": 1.5},
        {"kind": "status", "retry_after": "soon"},
        {"kind": "status", "retry_after": "http-date:-3"},
        {"kind": "stall", "delay_s": "1"},
        {"kind": "truncate", "route": "cloudlayer.job"},
        {"kind": "status", "typo": 1},
        {"kind": "expired", "route": "files", "style": "418"},
    ],
)
def test_bad_fault_rules_are_refused_with_a_spec_error(spec: dict[str, object]) -> None:
    """Every malformed rule raises SpecError (a 400 over HTTP), never a KeyError or a silent default."""
    with pytest.raises(SpecError):
        FaultBook().add(spec)
