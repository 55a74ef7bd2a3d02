"""The S3 rows' contenders and their checks: asset-worker with ``ASSET_WORKER_DEST=s3://BUCKET/PREFIX``
against rclone (``rclone copyurl URL :s3:BUCKET/KEY`` for one large file, ``rclone copy --http-url
DIR_URL :http: :s3:BUCKET/PREFIX`` for many files), both sending what nginx serves to the same S3
server on loopback, each run under a prefix of its own.

Both are configured by environment variables only, for that server and nothing else: the shell's
``AWS_*`` and ``RCLONE_*`` variables are dropped, and the AWS and rclone configuration files are
pointed at paths that do not exist, so every other setting is each program's default.

After the clock stops every object is read back (a GET, hashed here) whatever the contender claims,
and everything under the run's prefix is then deleted (objects, and uploads left unfinished), so the
server's disk holds one copy at most.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Final

import contenders as run_one
from common import BenchError
from contenders import Context, Sample, local_env
from fileserver import ServedFile

if TYPE_CHECKING:
    from tests.s3server import S3Server

REGION: Final = "us-east-1"
RCLONE_TRANSFERS: Final = 16  # rclone copy's files at once: as many as aria2c's -j 16
_READ_BYTES: Final = 1 << 20


class Bucket:
    """The bucket both contenders write to, seen through botocore: read back, delete."""

    def __init__(self, server: S3Server) -> None:
        import botocore.session
        from botocore.config import Config

        self.server = server
        self.name = server.bucket
        # Typed as Any: only the aiobotocore stubs are installed, not mypy-boto3-s3 for plain botocore.
        self._client: Any = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=server.endpoint_url,
            region_name=REGION,
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            config=Config(s3={"addressing_style": "path"}),
        )

    def check(self, key: str, expected: ServedFile) -> str | None:
        """What is wrong with the object at ``key`` (missing, size, sha256 of its bytes), or None."""
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"s3://{self.name}/{key}"
        try:
            size, found = self._read(key)
        except self._client.exceptions.NoSuchKey:
            return f"{where}: missing"
        except (BotoCoreError, ClientError) as exc:
            return f"{where}: cannot be read back: {exc}"
        if size != expected.size:
            return f"{where}: {size} bytes, expected {expected.size}"
        return None if found == expected.sha256 else f"{where}: sha256 {found} != {expected.sha256}"

    def _read(self, key: str) -> tuple[int, str]:
        """The object's size and sha256, from its bytes (a GET, read 1 MiB at a time)."""
        digest, size = hashlib.sha256(), 0
        with self._client.get_object(Bucket=self.name, Key=key)["Body"] as body:
            while chunk := body.read(_READ_BYTES):
                digest.update(chunk)
                size += len(chunk)
        return size, digest.hexdigest()

    def check_asset(self, asset: Mapping[str, Any], expected: ServedFile) -> str | None:
        """``run_one.CopyCheck`` for a receipt's ``s3://`` URI in this bucket."""
        uri = str(asset.get("uri") or "")
        prefix = f"s3://{self.name}/"
        return self.check(uri.removeprefix(prefix), expected) if uri.startswith(prefix) else f"uri {uri!r}"

    def clear(self, prefix: str) -> None:
        """Delete every object and abort every unfinished upload under ``prefix``."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._clear(prefix)
        except (BotoCoreError, ClientError) as exc:
            raise BenchError(f"the S3 server failed while clearing {prefix}: {exc}") from exc

    def _clear(self, prefix: str) -> None:
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
            for item in page.get("Contents", []):
                self._client.delete_object(Bucket=self.name, Key=item["Key"])
        uploads = self._client.list_multipart_uploads(Bucket=self.name, Prefix=prefix)
        for upload in uploads.get("Uploads", []):
            key, upload_id = upload["Key"], upload["UploadId"]
            self._client.abort_multipart_upload(Bucket=self.name, Key=key, UploadId=upload_id)

    def close(self) -> None:
        self._client.close()


def _without(env: Mapping[str, str], *prefixes: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith(prefixes)}


def worker_s3_settings(server: S3Server, prefix: str) -> dict[str, str]:
    """The worker's variables for an S3 destination: ``ASSET_WORKER_DEST``, endpoint, region, path-style
    addressing (which SeaweedFS on an IP address needs), and the credentials through botocore's standard
    chain, as in production."""
    return {
        "ASSET_WORKER_DEST": f"s3://{server.bucket}/{prefix}",
        "ASSET_WORKER_S3_ENDPOINT_URL": server.endpoint_url,
        "ASSET_WORKER_S3_REGION": REGION,
        "ASSET_WORKER_S3_PATH_STYLE": "true",
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
    }


def rclone_s3_settings(server: S3Server) -> dict[str, str]:
    """rclone's on-the-fly ``:s3:`` remote, set up by its ``RCLONE_S3_*`` variables for this server."""
    return {
        "RCLONE_S3_PROVIDER": "SeaweedFS",
        "RCLONE_S3_ENDPOINT": server.endpoint_url,
        "RCLONE_S3_REGION": REGION,
        "RCLONE_S3_ACCESS_KEY_ID": server.access_key,
        "RCLONE_S3_SECRET_ACCESS_KEY": server.secret_key,
    }


def described_settings(server: S3Server) -> list[str]:
    """Both contenders' settings as printed under the table, credentials named, not shown."""

    def shown(settings: Mapping[str, str]) -> str:
        return " ".join(f"{k}={v}" for k, v in settings.items() if "KEY" not in k) + " and the server's keys"

    return [
        f"asset-worker: {shown(worker_s3_settings(server, 'bench/RUNDIR'))}",
        f"rclone: {shown(rclone_s3_settings(server))}",
    ]


def worker_env(ctx: Context, workdir: Path, server: S3Server, prefix: str) -> dict[str, str]:
    """``ctx.worker_env`` with the S3 destination, and no AWS configuration but these variables."""
    return (
        _without(ctx.worker_env(workdir), "AWS_")
        | worker_s3_settings(server, prefix)
        | {
            "AWS_CONFIG_FILE": str(workdir / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "no-aws-credentials"),
        }
    )


def rclone_env(workdir: Path, server: S3Server) -> dict[str, str]:
    """This environment without rclone's or AWS's own variables, and no rclone configuration file."""
    no_config = {"RCLONE_CONFIG": str(workdir / "no-rclone.conf")}
    return _without(local_env(), "RCLONE_", "AWS_") | no_config | rclone_s3_settings(server)


def run_prefix(workdir: Path) -> str:
    """Each run's own prefix: the worker records an identical object already there instead of sending it."""
    return f"bench/{workdir.name}"


def asset_worker(
    ctx: Context,
    workdir: Path,
    bucket: Bucket,
    jobs: Mapping[str, ServedFile],
    count_tx: run_one.TxCount | None = None,
) -> Sample:
    """``run_one.asset_worker`` with the S3 destination; each receipt's object read back."""
    prefix = run_prefix(workdir)
    try:
        env = worker_env(ctx, workdir, bucket.server, prefix)
        return run_one.asset_worker(
            ctx, workdir, jobs, env=env, check_copy=bucket.check_asset, count_tx=count_tx
        )
    finally:
        bucket.clear(prefix + "/")


def rclone(ctx: Context, workdir: Path, bucket: Bucket, file: ServedFile) -> Sample:
    """``rclone copyurl URL :s3:BUCKET/KEY``, then the object read back."""
    copy = [
        "copyurl",
        ctx.base_url + file.path,
        f":s3:{bucket.name}/{run_prefix(workdir)}/{_object_name(file)}",
    ]
    return _rclone(ctx, workdir, bucket, copy, [file])


def rclone_dir(ctx: Context, workdir: Path, bucket: Bucket, files: list[ServedFile], url_path: str) -> Sample:
    """``rclone copy --http-url DIR_URL :http: :s3:BUCKET/PREFIX --transfers 16``: every file of the
    directory nginx lists at ``url_path`` (``files``, nothing else), then each object read back."""
    target = f":s3:{bucket.name}/{run_prefix(workdir)}"
    copy = [
        "copy",
        "--http-url",
        ctx.base_url + url_path,
        ":http:",
        target,
        "--transfers",
        str(RCLONE_TRANSFERS),
    ]
    return _rclone(ctx, workdir, bucket, copy, files)


def _object_name(file: ServedFile) -> str:
    """The name rclone gives a file's object under the run's prefix: its own, without directories."""
    return PurePosixPath(file.name).name


def _rclone(ctx: Context, workdir: Path, bucket: Bucket, args: list[str], files: list[ServedFile]) -> Sample:
    """rclone with ``args`` (which write under the run's prefix), then every file's object read back."""
    prefix = run_prefix(workdir)
    log_path = workdir / "stderr.log"
    timeout_s = ctx.timeout_s(len(files), sum(f.size for f in files))
    try:
        with log_path.open("wb") as log:
            run = ctx.measure(
                [ctx.programs["rclone"], *args], timeout_s, log, rclone_env(workdir, bucket.server)
            )
        error = run_one.exit_problem(run.code, log_path, run.out) or _check_all(bucket, prefix, files)
    finally:
        bucket.clear(prefix + "/")
    return run_one.sample_of(run, error)


def _check_all(bucket: Bucket, prefix: str, files: list[ServedFile]) -> str | None:
    problems = [p for f in files if (p := bucket.check(f"{prefix}/{_object_name(f)}", f)) is not None]
    return run_one.summarise_problems(problems, len(files))
