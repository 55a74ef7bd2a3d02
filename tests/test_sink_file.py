"""The local-disk sink: whole files or nothing, durable renames, no writes outside the root, and a
full or read-only disk treated as a destination to wait for, not a failed asset."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.security.smalldisk import fill, free_bytes, small_disk
from worker.errors import StorageError, StorageInterrupted, StorageRejected, StorageUnavailable
from worker.sinks.base import Committed, ResumableUpload, SourceEntity
from worker.sinks.file import FREE_SPACE_MARGIN_MAX_BYTES, FileSink, FileUpload, SpaceBook, translate_os_error

MIB = 1 << 20
TEMP_NAME = re.compile(r"^\.a\.pdf\.[0-9a-f]{12}\.part$")


def tree(path: Path) -> set[str]:
    """Every file and directory below ``path``, relative to it."""
    return {str(p.relative_to(path)) for p in path.rglob("*")}


async def open_upload(sink: FileSink, key: str, expected_size: int | None = None) -> FileUpload:
    return await sink.open(key, content_type=None, expected_size=expected_size, expected_sha256=None)


async def commit(upload: FileUpload, data: bytes) -> Committed:
    return await upload.commit(size=len(data), sha256=hashlib.sha256(data).hexdigest())


async def store(sink: FileSink, key: str, data: bytes) -> Committed:
    upload = await open_upload(sink, key)
    await upload.write(data)
    return await commit(upload, data)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MiB file system, so that free space and ENOSPC are the kernel's own."""
    with small_disk(tmp_path / "disk", 16 * MIB) as mounted:
        yield mounted


def margin_of(disk: Path) -> int:
    stats = os.statvfs(disk)
    return min(FREE_SPACE_MARGIN_MAX_BYTES, stats.f_blocks * stats.f_frsize // 100)


# --- publishing ---------------------------------------------------------------------------------


async def test_nothing_is_visible_until_commit_then_the_whole_file(tmp_path: Path) -> None:
    """While bytes arrive they sit in one dot-named temp file beside the target; commit renames
    it to the key, whole, and leaves nothing else behind."""
    sink = FileSink(tmp_path)
    upload = await open_upload(sink, "p/j/a.pdf")
    await upload.write(b"first ")
    await upload.write(b"second")
    directory = tmp_path / "p" / "j"
    assert not (directory / "a.pdf").exists()
    [temp] = os.listdir(directory)
    assert TEMP_NAME.match(temp)
    committed = await commit(upload, b"first second")
    assert (directory / "a.pdf").read_bytes() == b"first second"
    assert os.listdir(directory) == ["a.pdf"]
    assert committed == Committed(uri=(directory / "a.pdf").as_uri())
    assert committed.uri == sink.uri_for("p/j/a.pdf")


async def test_commit_replaces_an_earlier_copy(tmp_path: Path) -> None:
    """Storing a key again replaces the old file in one rename (a refreshed asset)."""
    sink = FileSink(tmp_path)
    await store(sink, "a.pdf", b"old version")
    await store(sink, "a.pdf", b"new")
    assert (tmp_path / "a.pdf").read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["a.pdf"]


async def test_restart_throws_away_what_was_written(tmp_path: Path) -> None:
    """After restart (the source could not resume) the file holds only the bytes written since."""
    sink = FileSink(tmp_path)
    upload = await open_upload(sink, "a.pdf")
    await upload.write(b"broken-off beginning")
    await upload.restart()
    await upload.write(b"whole")
    await commit(upload, b"whole")
    assert (tmp_path / "a.pdf").read_bytes() == b"whole"


async def test_abort_removes_the_temp_file_and_publishes_nothing(tmp_path: Path) -> None:
    """An aborted upload leaves no trace, and aborting twice is harmless."""
    sink = FileSink(tmp_path)
    upload = await open_upload(sink, "d/a.pdf")
    await upload.write(b"partial")
    await upload.abort()
    await upload.abort()
    assert os.listdir(tmp_path / "d") == []


async def test_abort_after_commit_keeps_the_file(tmp_path: Path) -> None:
    """The transfer's cleanup may abort a committed upload: the published file stays."""
    sink = FileSink(tmp_path)
    upload = await open_upload(sink, "a.pdf", expected_size=4)
    await upload.write(b"data")
    await commit(upload, b"data")
    await upload.abort()
    assert (tmp_path / "a.pdf").read_bytes() == b"data"


@dataclass(frozen=True)
class Synced:
    """What one fsync call saw: the kind and inode of its descriptor, and the target's state."""

    directory: bool
    inode: int
    size: int | None
    final_exists: bool


async def test_the_file_is_synced_before_the_rename_and_the_directory_after(tmp_path: Path) -> None:
    """A crash never leaves a renamed but empty file (the data is fsync'd, all of it, before the
    rename) nor loses the rename (the directory is fsync'd after it)."""
    final = tmp_path / "p" / "a.pdf"
    calls: list[Synced] = []

    def recording_fsync(fd: int) -> None:
        info = os.fstat(fd)
        directory = stat.S_ISDIR(info.st_mode)
        calls.append(Synced(directory, info.st_ino, None if directory else info.st_size, final.exists()))
        os.fsync(fd)

    sink = FileSink(tmp_path, fsync=recording_fsync)
    upload = await open_upload(sink, "p/a.pdf")
    await upload.write(b"x" * 100)  # small enough to sit in the write buffer until commit
    assert calls == []
    await commit(upload, b"x" * 100)
    assert calls == [
        Synced(directory=False, inode=final.stat().st_ino, size=100, final_exists=False),
        Synced(directory=True, inode=final.parent.stat().st_ino, size=None, final_exists=True),
    ]


# --- temp files of dead workers -----------------------------------------------------------------


async def test_open_removes_orphaned_temps_of_the_same_target(disk: Path) -> None:
    """Temp files of this target left by workers that died can never complete: opening the target
    again removes every one of them, wherever they come among other files, so crashed transfers
    do not fill the disk."""
    orphans = [f".a.pdf.{token}.part" for token in ("0123456789ab", "ba9876543210", "aaaaaaaaaaaa")]
    others = [
        ".a.pdf.x.0123456789ab.part",
        ".a.pdf.other.part",
        ".a.pdf.0123456789a.part",
        ".a.pdf.0123456789abc.part",
        ".a.pdf.0123456789AB.part",
        ".a.pdf.g123456789ab.part",
        ".a.pdf.tar.0123456789ab.part",
        ".a.pdf.0123456789ab.part.keep",
    ]
    # Interleaved, other files first and last: tmpfs lists a directory in creation order or its
    # reverse (by kernel version), so either way an orphan comes after another file.
    for index, name in enumerate(others):
        (disk / name).write_bytes(b"left behind")
        if index % 3 == 0:
            (disk / orphans[index // 3]).write_bytes(b"left behind")
    upload = await open_upload(FileSink(disk), "a.pdf")
    left = set(os.listdir(disk))
    assert left & set(orphans) == set()
    assert left - set(others) == {name for name in left if TEMP_NAME.match(name)}  # the new upload's
    assert len(left) == len(others) + 1
    await upload.abort()


async def test_open_keeps_temps_of_other_targets(tmp_path: Path) -> None:
    """Only this target's own temp names are swept: the live temp of ``a.pdf.x`` (whose name
    starts like one of ``a.pdf``'s) and files that merely look similar stay."""
    sink = FileSink(tmp_path)
    sibling = await open_upload(sink, "a.pdf.x")
    await sibling.write(b"sibling bytes")
    lookalikes = [
        ".a.pdf.x.0123456789ab.part",  # a temp of a.pdf.x
        ".a.pdf.0123456789a.part",  # token too short
        ".a.pdf.0123456789abc.part",  # token too long
        ".a.pdf.0123456789AB.part",  # not a token we make
        ".a.pdf.0123456789ab.part.keep",
    ]
    for name in lookalikes:
        (tmp_path / name).write_bytes(b"not ours")
    before = tree(tmp_path)
    upload = await open_upload(sink, "a.pdf")
    after = tree(tmp_path)
    assert before <= after  # nothing swept
    [own_temp] = after - before
    assert TEMP_NAME.match(own_temp)
    await upload.abort()
    await commit(sibling, b"sibling bytes")
    assert (tmp_path / "a.pdf.x").read_bytes() == b"sibling bytes"


async def test_a_superseded_upload_cannot_commit_over_its_successor(tmp_path: Path) -> None:
    """When a worker takes a job over, the old owner's temp file is swept; the old owner's commit
    then fails as an interrupted write (retried, not failed for good) and its abort leaves the new
    owner's file alone."""
    sink = FileSink(tmp_path)
    old = await open_upload(sink, "a.pdf")
    await old.write(b"old owner")
    new = await open_upload(sink, "a.pdf")
    await new.write(b"new owner")
    await commit(new, b"new owner")
    with pytest.raises(StorageInterrupted) as caught:
        await commit(old, b"old owner")
    assert (caught.value.code, caught.value.key) == ("storage_interrupted", "a.pdf")
    await old.abort()
    assert (tmp_path / "a.pdf").read_bytes() == b"new owner"
    assert os.listdir(tmp_path) == ["a.pdf"]


# --- staying inside the root --------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "../outside.pdf",
        "a/../../outside/x.pdf",
        "../root-sibling/x.pdf",
        "OUTSIDE_ABSOLUTE",
        "",
        ".",
        "a/..",
    ],
)
async def test_keys_outside_the_root_are_refused(tmp_path: Path, key: str) -> None:
    """A key that leaves the root (``..``, absolute) or names the root itself is refused before
    anything is created, by the URI and by open alike."""
    root = tmp_path / "root"
    root.mkdir()
    if key == "OUTSIDE_ABSOLUTE":
        key = str(tmp_path / "outside" / "x.pdf")
    sink = FileSink(root)
    with pytest.raises(StorageRejected) as by_uri:
        sink.uri_for(key)
    with pytest.raises(StorageRejected) as by_open:
        await open_upload(sink, key)
    assert by_uri.value.key == by_open.value.key == key
    assert by_open.value.code == "storage_rejected"
    assert tree(tmp_path) == {"root"}


async def test_a_symlink_inside_the_root_pointing_outside_is_refused(tmp_path: Path) -> None:
    """A directory inside the root that is a symlink to elsewhere is not followed out: nothing is
    written or created where it points."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    sink = FileSink(root)
    for key in ("link/a.pdf", "link/sub/a.pdf"):
        with pytest.raises(StorageRejected) as caught:
            await open_upload(sink, key)
        assert str(caught.value) == f"cannot write {key}: destination directory resolves outside the root"
        assert caught.value.key == key
    assert list(outside.iterdir()) == []


async def test_symlinks_that_stay_inside_the_root_are_fine(tmp_path: Path) -> None:
    """A root that is itself a symlink (/srv/assets -> /mnt/disk) and a symlinked directory that
    points elsewhere inside the root both work."""
    real = tmp_path / "real"
    (real / "store").mkdir(parents=True)
    (tmp_path / "root").symlink_to(real)
    (real / "alias").symlink_to(real / "store")
    sink = FileSink(tmp_path / "root")
    await store(sink, "alias/a.pdf", b"via alias")
    await store(sink, "b/b.pdf", b"via root link")
    assert (real / "store" / "a.pdf").read_bytes() == b"via alias"
    assert (real / "b" / "b.pdf").read_bytes() == b"via root link"


def test_owns_exactly_what_uri_for_names(tmp_path: Path) -> None:
    """Stored copies count as this destination's when under its root, never a sibling directory's
    or the root itself; a root of ``/`` owns every file URI."""
    sink = FileSink(tmp_path / "root")
    assert sink.owns(sink.uri_for("p/j/a.pdf"))
    assert not sink.owns(FileSink(tmp_path / "root-other").uri_for("p/j/a.pdf"))
    assert not sink.owns((tmp_path / "root").as_uri())
    assert not sink.owns("s3://bucket" + (tmp_path / "root" / "a.pdf").as_posix())
    everything = FileSink(Path("/"))
    assert everything.owns(everything.uri_for("srv/a.pdf"))


# --- the destination's errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind", "error_code"),
    [
        (errno.ENOSPC, StorageUnavailable, "disk_full"),
        (errno.EDQUOT, StorageUnavailable, "disk_full"),
        (errno.EIO, StorageUnavailable, "storage_unavailable"),
        (errno.EAGAIN, StorageUnavailable, "storage_unavailable"),
        (errno.EBUSY, StorageUnavailable, "storage_unavailable"),
        (errno.EMFILE, StorageUnavailable, "storage_unavailable"),
        (errno.ENFILE, StorageUnavailable, "storage_unavailable"),
        (errno.EROFS, StorageUnavailable, "storage_unavailable"),
        (errno.ENOENT, StorageInterrupted, "storage_interrupted"),
        (errno.EACCES, StorageUnavailable, "dest_not_writable"),
        (errno.EPERM, StorageUnavailable, "dest_not_writable"),
        (errno.ENOTDIR, StorageRejected, "storage_rejected"),
    ],
)
def test_os_errors_map_to_wait_retry_or_fail(code: int, kind: type[StorageError], error_code: str) -> None:
    """A full disk (ENOSPC, or a quota: EDQUOT), a device that is down or a permission denied to the
    worker's user makes the job wait (for space, the device, an operator); a vanished temp file
    retries the asset; anything else (a file in a directory's place) fails it. The message names
    the key and the system's reason."""
    error = translate_os_error(OSError(code, os.strerror(code)), "p/a.pdf")
    assert type(error) is kind
    assert (error.code, error.key) == (error_code, "p/a.pdf")
    assert str(error).startswith(f"cannot write p/a.pdf: {os.strerror(code)}")


def test_an_os_error_without_a_reason_keeps_its_text() -> None:
    """An OSError raised without errno and reason still says what happened."""
    error = translate_os_error(OSError("odd failure"), "a.pdf")
    assert type(error) is StorageRejected
    assert str(error) == "cannot write a.pdf: odd failure"


async def test_running_out_of_space_while_writing_is_disk_full(disk: Path) -> None:
    """A real ENOSPC mid-transfer (the size was not announced) is disk_full, a reason to wait; the
    abort then frees what the temp file took."""
    sink = FileSink(disk / "root")
    upload = await open_upload(sink, "a.pdf")
    with pytest.raises(StorageUnavailable) as caught:
        for _ in range(32):
            await upload.write(b"x" * MIB)
    assert (caught.value.code, caught.value.key) == ("disk_full", "a.pdf")
    await upload.abort()
    assert os.listdir(disk / "root") == []


async def test_a_disk_full_at_commit_publishes_nothing(disk: Path) -> None:
    """Bytes still buffered when the disk fills fail the commit as disk_full: no file appears under
    the key, and the abort still removes the temp file although its last flush cannot succeed."""
    sink = FileSink(disk / "root")
    for operation in ("commit", "abort"):
        upload = await open_upload(sink, "a.pdf")
        filler = fill(disk, 0)
        await upload.write(b"x" * 100)  # stays in the write buffer: the disk is already full
        if operation == "commit":
            with pytest.raises(StorageUnavailable) as caught:
                await commit(upload, b"x" * 100)
            assert (caught.value.code, caught.value.key) == ("disk_full", "a.pdf")
        await upload.abort()
        assert os.listdir(disk / "root") == []
        filler.unlink()


@pytest.fixture
def read_only_root(disk: Path) -> Path:
    """A root directory on a file system then remounted read-only."""
    (disk / "root").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    return disk / "root"


async def test_a_read_only_destination_is_a_wait(read_only_root: Path) -> None:
    """A file system remounted read-only (often after I/O errors) is storage_unavailable: the job
    waits for an operator to bring it back instead of failing its assets."""
    with pytest.raises(StorageUnavailable) as caught:
        await open_upload(FileSink(read_only_root), "p/a.pdf")
    assert (caught.value.code, caught.value.key) == ("storage_unavailable", "p/a.pdf")


async def test_a_file_where_a_directory_belongs_is_rejected(tmp_path: Path) -> None:
    """A file in the way of the key's directory is a configuration problem: rejected, untouched."""
    (tmp_path / "p").write_bytes(b"in the way")
    with pytest.raises(StorageRejected) as caught:
        await open_upload(FileSink(tmp_path), "p/a.pdf")
    assert (caught.value.code, caught.value.key) == ("storage_rejected", "p/a.pdf")
    assert (tmp_path / "p").read_bytes() == b"in the way"


async def test_a_directory_where_the_file_belongs_is_rejected(tmp_path: Path) -> None:
    """A directory under the key's name cannot be replaced by a file: the commit is rejected, the
    directory and its contents stay, and the abort removes the temp file."""
    (tmp_path / "a.pdf").mkdir()
    (tmp_path / "a.pdf" / "kept").write_bytes(b"kept")
    upload = await open_upload(FileSink(tmp_path), "a.pdf")
    await upload.write(b"data")
    with pytest.raises(StorageRejected) as caught:
        await commit(upload, b"data")
    assert (caught.value.code, caught.value.key) == ("storage_rejected", "a.pdf")
    await upload.abort()
    assert tree(tmp_path) == {"a.pdf", "a.pdf/kept"}


# --- free space ---------------------------------------------------------------------------------


async def refused(sink: FileSink, key: str, size: int) -> StorageUnavailable:
    with pytest.raises(StorageUnavailable) as caught:
        await open_upload(sink, key, expected_size=size)
    assert (caught.value.code, caught.value.key) == ("disk_full", key)
    return caught.value


async def test_an_announced_size_must_fit_with_one_percent_spare(disk: Path) -> None:
    """An upload announced larger than the free space less 1 % of the disk is refused before any
    temp file exists, with a message giving the numbers; one byte less is accepted."""
    root = disk / "root"
    (root / "p").mkdir(parents=True)
    sink = FileSink(root)
    free, margin = free_bytes(disk), margin_of(disk)
    assert margin == 16 * MIB // 100
    error = await refused(sink, "p/a.pdf", free - margin + 1)
    assert str(error) == (
        f"cannot write p/a.pdf: {free - margin + 1} bytes do not fit in the {free} bytes free on "
        f"{root} (keeping {margin} bytes spare)"
    )
    assert os.listdir(root / "p") == []
    upload = await open_upload(sink, "p/a.pdf", expected_size=free - margin)
    await upload.abort()


async def test_the_spare_room_is_capped_on_large_disks(tmp_path: Path) -> None:
    """On a large disk the spare room is 64 MiB, not 1 %: announced sizes up to the free space
    less 64 MiB are accepted. (tmpfs reserves no memory for its size, so 8 GiB costs nothing.)"""
    with small_disk(tmp_path / "disk", 8 << 30) as large:
        sink = FileSink(large)
        free = free_bytes(large)
        await refused(sink, "a.pdf", free - 64 * MIB + 1)
        upload = await open_upload(sink, "a.pdf", expected_size=free - 64 * MIB)
        await upload.abort()


async def test_uploads_in_progress_keep_their_promised_space(disk: Path) -> None:
    """Space announced by an open upload counts as taken, less what it has written since (the
    disk counts that), and never less than nothing; when it ends the promise ends with it."""
    sink = FileSink(disk / "root")
    margin = margin_of(disk)
    first = await open_upload(sink, "first.bin", expected_size=4 * MIB)

    async def fits_exactly(promised: int) -> None:
        room = free_bytes(disk) - promised - margin
        await refused(sink, "probe.bin", room + 1)
        await (await open_upload(sink, "probe.bin", expected_size=room)).abort()

    await fits_exactly(4 * MIB)
    await first.write(b"x" * MIB)
    await fits_exactly(3 * MIB)
    await first.write(b"x" * 5 * MIB)  # more than it announced
    await fits_exactly(0)
    await first.abort()
    await fits_exactly(0)
    second = await open_upload(sink, "second.bin", expected_size=4 * MIB)
    await second.write(b"x" * MIB)
    await commit(second, b"x" * MIB)
    await fits_exactly(0)


async def test_space_promised_beyond_what_is_free_reads_as_none_free(disk: Path) -> None:
    """When other writers took the room promised to an upload in progress, a refusal says 0 bytes
    are free, not a negative number."""
    sink = FileSink(disk / "root")
    first = await open_upload(sink, "first.bin", expected_size=8 * MIB)
    fill(disk, 0)
    error = await refused(sink, "second.bin", 1)
    assert "do not fit in the 0 bytes free" in str(error)
    await first.abort()


async def test_an_unannounced_size_is_not_checked_up_front(disk: Path) -> None:
    """Without an announced size there is nothing to check (the asset may be tiny): open succeeds
    on a full disk and promises nothing."""
    fill(disk, 0)
    sink = FileSink(disk / "root")
    upload = await open_upload(sink, "a.pdf")
    await upload.abort()


def test_space_book_arithmetic() -> None:
    """Promises add up; writing reduces one down to zero, not below; unknown uploads change
    nothing; releasing twice is harmless."""
    book = SpaceBook()
    first, second = object(), object()
    book.reserve(first, 10)
    book.reserve(second, 5)
    assert book.reserved() == 15
    book.wrote(first, 4)
    assert book.reserved() == 11
    book.wrote(first, 100)
    assert book.reserved() == 5
    book.wrote(object(), 3)
    assert book.reserved() == 5
    book.release(second)
    book.release(second)
    assert book.reserved() == 0


# --- the resumable part -------------------------------------------------------------------------

ENTITY = SourceEntity('"etag-1"', 1000)
PART, RECORD = ".a.pdf.resume.part", ".a.pdf.resume.json"


async def test_a_resumable_upload_moves_to_the_targets_part_and_publishes_it(tmp_path: Path) -> None:
    """Declaring a resumable entity moves the (still empty) upload from its random temp file to the
    target's fixed part with a record of the entity beside it; commit publishes the part and
    removes the record, so nothing is left but the file."""
    sink = FileSink(tmp_path)
    upload = await open_upload(sink, "a.pdf")
    assert isinstance(upload, ResumableUpload)
    assert await upload.resume(ENTITY) == 0
    assert sorted(os.listdir(tmp_path)) == [RECORD, PART]
    await upload.write(b"bytes")
    await commit(upload, b"bytes")
    assert os.listdir(tmp_path) == ["a.pdf"] and (tmp_path / "a.pdf").read_bytes() == b"bytes"


async def test_a_suspended_part_is_taken_over_by_the_next_upload_of_the_entity(tmp_path: Path) -> None:
    """What a suspended upload wrote is held by the next upload of the same entity, which reads it
    back in order and writes after it."""
    sink = FileSink(tmp_path)
    first = await open_upload(sink, "a.pdf")
    await first.resume(ENTITY)
    await first.write(b"kept ")
    await first.suspend()
    assert sorted(os.listdir(tmp_path)) == [RECORD, PART]
    second = await open_upload(sink, "a.pdf")
    assert await second.resume(ENTITY) == 5
    read: list[bytes] = []
    await second.replay(read.append)
    assert b"".join(read) == b"kept "
    await second.write(b"rest")
    await commit(second, b"kept rest")
    assert os.listdir(tmp_path) == ["a.pdf"] and (tmp_path / "a.pdf").read_bytes() == b"kept rest"


async def test_a_part_held_by_a_live_upload_is_not_shared(tmp_path: Path) -> None:
    """Two live uploads of one target (a worker that lost its lease and the one that took over):
    the second cannot lock the part, so it keeps its random temp file; publishing it leaves the
    first's part alone, and the first can still keep its part for later."""
    sink = FileSink(tmp_path)
    zombie = await open_upload(sink, "a.pdf")
    await zombie.resume(ENTITY)
    await zombie.write(b"zombie")
    successor = await open_upload(sink, "a.pdf")
    assert await successor.resume(ENTITY) == 0
    await successor.write(b"successor")
    assert {n for n in os.listdir(tmp_path) if TEMP_NAME.match(n)} != set()
    await commit(successor, b"successor")
    await zombie.suspend()
    assert (tmp_path / PART).read_bytes() == b"zombie"
    assert sorted(os.listdir(tmp_path)) == [RECORD, PART, "a.pdf"]
    assert (tmp_path / "a.pdf").read_bytes() == b"successor"


async def test_publishing_without_resuming_removes_a_stale_part_nobody_holds(tmp_path: Path) -> None:
    """A part left by an earlier attempt of the target goes when the target is published another
    way (the file host no longer offers ranges, say): nothing stays behind a published file."""
    sink = FileSink(tmp_path)
    earlier = await open_upload(sink, "a.pdf")
    await earlier.resume(ENTITY)
    await earlier.write(b"stale")
    await earlier.suspend()
    await store(sink, "a.pdf", b"whole")
    assert os.listdir(tmp_path) == ["a.pdf"]


async def test_abort_and_restart_leave_nothing_resumable(tmp_path: Path) -> None:
    """abort removes the part and its record; after restart the part describes no entity, so a
    suspension then removes it too (its bytes would be nobody's)."""
    sink = FileSink(tmp_path)
    aborted = await open_upload(sink, "a.pdf")
    await aborted.resume(ENTITY)
    await aborted.write(b"x")
    await aborted.abort()
    assert os.listdir(tmp_path) == []
    restarted = await open_upload(sink, "a.pdf")
    await restarted.resume(ENTITY)
    await restarted.write(b"old file")
    await restarted.restart()
    assert os.listdir(tmp_path) == [PART]
    await restarted.suspend()
    assert os.listdir(tmp_path) == []


async def test_a_symlink_under_the_parts_name_is_not_followed(tmp_path: Path) -> None:
    """The part's name is opened without following links: a link planted there is never written
    through (the upload keeps its random temp file)."""
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    root = tmp_path / "root"
    root.mkdir()
    (root / PART).symlink_to(outside)
    upload = await open_upload(FileSink(root), "a.pdf")
    assert await upload.resume(ENTITY) == 0
    await upload.write(b"new")
    await commit(upload, b"new")
    assert outside.read_bytes() == b"precious" and (root / "a.pdf").read_bytes() == b"new"


async def test_the_kept_part_counts_as_room_for_its_target(disk: Path) -> None:
    """A target's part is either continued or emptied, so its bytes count as free for that target:
    a file that fits only with them is accepted, and refused for another target."""
    root = disk / "root"
    root.mkdir()
    sink = FileSink(root)
    earlier = await open_upload(sink, "a.pdf")
    await earlier.resume(SourceEntity('"big"', 12 * MIB))
    await earlier.write(b"k" * (4 * MIB))
    await earlier.suspend()
    size = free_bytes(disk) - margin_of(disk) + 2 * MIB
    upload = await open_upload(sink, "a.pdf", expected_size=size)
    await upload.abort()
    await refused(sink, "b.pdf", size)
