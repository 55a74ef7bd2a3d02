"""The SQLite store's tables and their migrations.

Kept apart from the queries in ``sqlite.py`` so the schema's history reads in one place.
"""

from __future__ import annotations

# One entry per schema version, applied in order inside one transaction and recorded in
# ``PRAGMA user_version``. Released entries are never edited: a change is a new entry
# (``ALTER TABLE jobs ADD COLUMN ...``), so every existing file can be brought forward.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE jobs (
            key              TEXT PRIMARY KEY,
            provider         TEXT NOT NULL,
            upstream_id      TEXT NOT NULL,
            state            TEXT NOT NULL,
            submitted_at     REAL NOT NULL,
            updated_at       REAL NOT NULL,
            finished_at      REAL,
            due_at           REAL NOT NULL,
            polling_since    REAL,
            polls            INTEGER NOT NULL DEFAULT 0,
            attempts         INTEGER NOT NULL DEFAULT 0,
            error_code       TEXT,
            error_message    TEXT,
            lease_owner      TEXT,
            lease_expires_at REAL,
            provider_state   TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX jobs_claim ON jobs (state, due_at)",
        "CREATE INDEX jobs_submitted ON jobs (submitted_at)",
        """CREATE TABLE assets (
            job_key           TEXT NOT NULL REFERENCES jobs (key) ON DELETE CASCADE,
            position          INTEGER NOT NULL,
            asset_id          TEXT NOT NULL,
            url               TEXT NOT NULL,
            expected_size     INTEGER,
            expected_sha256   TEXT,
            content_type      TEXT,
            ext               TEXT,
            expires_at        REAL,
            state             TEXT NOT NULL DEFAULT 'pending',
            uri               TEXT,
            size              INTEGER,
            sha256            TEXT,
            upstream_verified INTEGER,
            stored_at         REAL,
            error_code        TEXT,
            error_message     TEXT,
            PRIMARY KEY (job_key, asset_id)
        )""",
    ),
    (
        "ALTER TABLE assets ADD COLUMN etag TEXT",
        "ALTER TABLE assets ADD COLUMN version_id TEXT",
        "ALTER TABLE assets ADD COLUMN origin TEXT",
        # Finding a stored copy by content (dedupe) must not scan every receipt.
        "CREATE INDEX assets_stored_sha256 ON assets (sha256, size) WHERE state = 'stored'",
    ),
    (
        # A job may name its own destination (API submit); NULL means the worker's default.
        "ALTER TABLE jobs ADD COLUMN dest TEXT",
        # Keyset pagination walks (submitted_at, key).
        "DROP INDEX jobs_submitted",
        "CREATE INDEX jobs_submitted ON jobs (submitted_at, key)",
    ),
    (
        # Claims and the runner's "anything left?" read the due jobs of one phase in queue order
        # and stop after a few rows: each phase has an index in exactly that order, so neither
        # sorts nor scans the queue however long it grows.
        """CREATE INDEX jobs_poll_due ON jobs (due_at, submitted_at, key)
               WHERE state IN ('queued', 'polling')""",
        """CREATE INDEX jobs_transfer_due ON jobs (due_at, submitted_at, key)
               WHERE state = 'downloading'""",
        # Leased jobs (a few per worker): when the next lease runs out.
        "CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE lease_expires_at IS NOT NULL",
    ),
    (
        # The download under way, as its worker last reported it (worker.meter): JSON, or NULL.
        "ALTER TABLE jobs ADD COLUMN progress TEXT",
    ),
    (
        # Mirror mode: the source a job was discovered by, and when the vendor created its item.
        "ALTER TABLE jobs ADD COLUMN source TEXT",
        "ALTER TABLE jobs ADD COLUMN origin_created_at REAL",
        "CREATE INDEX jobs_source ON jobs (source, state) WHERE source IS NOT NULL",
        # One row per mirror source: its walk's lease, where an interrupted walk resumes, history.
        """CREATE TABLE mirror_sources (
            source            TEXT PRIMARY KEY,
            lease_owner       TEXT,
            lease_expires_at  REAL,
            walk_kind         TEXT,
            walk_position     TEXT,
            walk_started_at   REAL,
            walk_pages        INTEGER NOT NULL DEFAULT 0,
            last_full_walk_at REAL,
            last_walk_at      REAL,
            newest_created_at REAL,
            error_code        TEXT,
            error_message     TEXT,
            updated_at        REAL NOT NULL
        )""",
    ),
    (
        # The newest item the walk under way has seen, kept apart until the walk completes: an
        # interrupted incremental walk must resume with the mark it started from, or it would stop
        # at the first page it had already read and miss what lay below it.
        "ALTER TABLE mirror_sources ADD COLUMN walk_newest_created_at REAL",
    ),
)
