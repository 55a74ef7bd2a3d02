"""The PostgreSQL store's tables and their migrations.

Everything lives in the ``asset_worker`` schema, so the worker can share a database with the
application that feeds it without its table names colliding. Column names and meanings match the
SQLite store (``worker/store/rows.py`` maps both); docs/operations.md ("Submitting from other
programs") documents a ``jobs`` row for programs in other languages, and the constraints here
enforce what it says, so a hand-written ``INSERT`` cannot create a row the worker would misread.
"""

from __future__ import annotations

# Held (transaction-scoped) while migrating, so replicas starting together migrate once: the others
# wait, then find the schema current. Any constant works; this one spells "assetwkr" in ASCII.
MIGRATION_LOCK_ID = 0x6173_7365_7477_6B72

# One entry per schema version, applied in order in one transaction (DDL is transactional in
# PostgreSQL) and recorded in asset_worker.schema_version. Released entries are never edited.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE asset_worker.jobs (
            key              text PRIMARY KEY,
            provider         text NOT NULL CHECK (provider IN ('cloudlayer', 'layers')),
            upstream_id      text NOT NULL CHECK (length(upstream_id) BETWEEN 1 AND 256
                                                  AND upstream_id !~ '[\\s\\x01-\\x1f\\x7f]'),
            state            text NOT NULL DEFAULT 'queued'
                             CHECK (state IN ('queued', 'polling', 'downloading', 'done', 'failed',
                                              'canceled')),
            submitted_at     double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp()),
            updated_at       double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp()),
            finished_at      double precision,
            due_at           double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp()),
            polling_since    double precision,
            polls            integer NOT NULL DEFAULT 0,
            attempts         integer NOT NULL DEFAULT 0,
            error_code       text,
            error_message    text,
            lease_owner      text,
            lease_expires_at double precision,
            provider_state   jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(provider_state) = 'object'),
            dest             text,
            CHECK (key = provider || ':' || upstream_id)
        )""",
        # Claims: due jobs of a state, earliest first.
        "CREATE INDEX jobs_claim ON asset_worker.jobs (state, due_at)",
        # Listing and keyset pagination.
        "CREATE INDEX jobs_submitted ON asset_worker.jobs (submitted_at, key)",
        """CREATE TABLE asset_worker.assets (
            job_key           text NOT NULL REFERENCES asset_worker.jobs (key) ON DELETE CASCADE,
            position          integer NOT NULL,
            asset_id          text NOT NULL,
            url               text NOT NULL,
            expected_size     bigint,
            expected_sha256   text,
            content_type      text,
            ext               text,
            expires_at        double precision,
            state             text NOT NULL DEFAULT 'pending'
                              CHECK (state IN ('pending', 'stored', 'failed')),
            uri               text,
            size              bigint,
            sha256            text,
            upstream_verified boolean,
            stored_at         double precision,
            error_code        text,
            error_message     text,
            etag              text,
            version_id        text,
            origin            text,
            PRIMARY KEY (job_key, asset_id)
        )""",
        # Finding a stored copy by content (dedupe) must not scan every receipt.
        "CREATE INDEX assets_stored_sha256 ON asset_worker.assets (sha256, size) WHERE state = 'stored'",
    ),
    # 2: providers come from the worker's registry, so the table no longer lists them; it still
    # refuses a name that could not be a provider's (the form JobKey.parse accepts). A row naming a
    # provider no worker serves fails at its first poll with invalid_job.
    (
        "ALTER TABLE asset_worker.jobs DROP CONSTRAINT IF EXISTS jobs_provider_check",
        """ALTER TABLE asset_worker.jobs ADD CONSTRAINT jobs_provider_name
               CHECK (provider ~ '^[a-z][a-z0-9_-]{0,39}$')""",
    ),
    # 3: claims and the runner's "anything left?" read the due jobs of one phase in queue order and
    # stop after a few rows: each phase has an index in exactly that order, so neither sorts nor
    # scans the queue however long it grows; leased jobs (a few per replica) have their own.
    (
        """CREATE INDEX jobs_poll_due ON asset_worker.jobs (due_at, submitted_at, key)
               WHERE state IN ('queued', 'polling')""",
        """CREATE INDEX jobs_transfer_due ON asset_worker.jobs (due_at, submitted_at, key)
               WHERE state = 'downloading'""",
        """CREATE INDEX jobs_leased ON asset_worker.jobs (lease_expires_at)
               WHERE lease_expires_at IS NOT NULL""",
    ),
    # 4: the download under way, as its worker last reported it (worker.meter), or NULL.
    ("ALTER TABLE asset_worker.jobs ADD COLUMN progress jsonb",),
    # 5: mirror mode: the source a job was discovered by, when the vendor created its item, and
    # one row per source (its walk's lease, where an interrupted walk resumes, its history).
    (
        "ALTER TABLE asset_worker.jobs ADD COLUMN source text",
        "ALTER TABLE asset_worker.jobs ADD COLUMN origin_created_at double precision",
        "CREATE INDEX jobs_source ON asset_worker.jobs (source, state) WHERE source IS NOT NULL",
        """CREATE TABLE asset_worker.mirror_sources (
            source            text PRIMARY KEY,
            lease_owner       text,
            lease_expires_at  double precision,
            walk_kind         text CHECK (walk_kind IN ('full', 'incremental')),
            walk_position     text,
            walk_started_at   double precision,
            walk_pages        integer NOT NULL DEFAULT 0,
            last_full_walk_at double precision,
            last_walk_at      double precision,
            newest_created_at double precision,
            error_code        text,
            error_message     text,
            updated_at        double precision NOT NULL
        )""",
    ),
    # 6: the newest item the walk under way has seen, kept apart until the walk completes (an
    # interrupted incremental walk resumes with the mark it started from).
    ("ALTER TABLE asset_worker.mirror_sources ADD COLUMN walk_newest_created_at double precision",),
)
