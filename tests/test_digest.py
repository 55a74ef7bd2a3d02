"""Incremental hashing and verification of finished copies."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.digest import Digest, normalise_sha256, verify
from worker.errors import IncompleteTransfer, IntegrityError, TransferError


@given(data=st.binary(max_size=5000), cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=20))
def test_chunked_digest_equals_one_shot(data: bytes, cuts: list[int]) -> None:
    """Feeding bytes in any chunking gives the same sha256 and size as hashing them at once."""
    digest = Digest()
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for start, stop in itertools.pairwise(bounds):
        digest.update(data[start:stop])
    assert digest.size == len(data)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


def test_verify_accepts_matching_copy_and_reports_upstream_check() -> None:
    """A copy matching everything published is accepted; upstream_verified says if anything was."""
    sha = hashlib.sha256(b"abc").hexdigest()
    assert verify(size=3, sha256=sha, content_length=3, expected_size=3, expected_sha256=sha.upper()) is True
    assert verify(size=3, sha256=sha, content_length=3) is False


def test_verify_detects_each_failure() -> None:
    """Short bodies, size mismatches and checksum mismatches each raise their own error code."""
    sha = hashlib.sha256(b"abc").hexdigest()
    with pytest.raises(IncompleteTransfer):
        verify(size=2, sha256=sha, content_length=3)
    with pytest.raises(IntegrityError) as size_error:
        verify(size=3, sha256=sha, expected_size=4)
    assert size_error.value.code == "size_mismatch"
    with pytest.raises(IntegrityError) as sha_error:
        verify(size=3, sha256=sha, expected_sha256="0" * 64)
    assert sha_error.value.code == "checksum_mismatch"


def test_normalise_sha256() -> None:
    """Vendor checksums are compared in lower-case hex; prefixes are accepted, junk ignored."""
    sha = "AB" * 32
    assert normalise_sha256(sha) == "ab" * 32
    assert normalise_sha256("sha256:" + sha) == "ab" * 32
    assert normalise_sha256("not-a-digest") is None
    assert normalise_sha256(None) is None


def test_verify_compares_the_whole_sha256() -> None:
    """A checksum that differs from the published one in any single hex digit, first or last, is
    a mismatch: comparing a prefix would let a corrupted copy through."""
    sha = hashlib.sha256(b"abc").hexdigest()
    for position in (0, 31, 63):
        wrong = sha[:position] + ("0" if sha[position] != "0" else "1") + sha[position + 1 :]
        with pytest.raises(IntegrityError):
            verify(size=3, sha256=sha, expected_sha256=wrong)


def test_verify_errors_say_what_was_expected_and_what_arrived() -> None:
    """Each failure carries its stable code and both values, which end up in the job's status."""
    sha = hashlib.sha256(b"abc").hexdigest()
    cases: list[tuple[Callable[[], bool], type[TransferError], str, object, object]] = [
        (
            lambda: verify(size=3, sha256=sha, content_length=4),
            IncompleteTransfer,
            "incomplete_transfer",
            4,
            3,
        ),
        (lambda: verify(size=3, sha256=sha, content_length=2), IntegrityError, "size_mismatch", 2, 3),
        (lambda: verify(size=3, sha256=sha, expected_size=5), IntegrityError, "size_mismatch", 5, 3),
        (
            lambda: verify(size=3, sha256=sha, expected_sha256="sha256:" + "AB" * 32),
            IntegrityError,
            "checksum_mismatch",
            "ab" * 32,
            sha,
        ),
    ]
    for check, kind, code, expected, actual in cases:
        with pytest.raises(TransferError) as caught:
            check()
        error = caught.value
        assert type(error) is kind
        assert (error.code, error.expected, error.actual) == (code, expected, actual)


def test_upstream_verified_means_the_vendor_published_something_usable() -> None:
    """A size or a usable sha256 from the vendor, either alone, makes the copy upstream-verified;
    the file host's Content-Length or an unusable checksum does not."""
    sha = hashlib.sha256(b"abc").hexdigest()
    assert verify(size=3, sha256=sha, expected_size=3) is True
    assert verify(size=3, sha256=sha, expected_sha256=sha) is True
    assert verify(size=3, sha256=sha, expected_size=3, expected_sha256=sha) is True
    assert verify(size=3, sha256=sha, content_length=3) is False
    assert verify(size=3, sha256=sha, expected_sha256="md5:900150983cd24fb0") is False
    assert verify(size=3, sha256=sha) is False
