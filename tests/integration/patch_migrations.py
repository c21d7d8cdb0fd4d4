#!/usr/bin/env python3
"""Patch a COPY of jobbergate-api's alembic migrations so they run on plain PostgreSQL (15 or later).

Only migration ``99c3877d0f10`` ("create job metric table") needs TimescaleDB. In the copy:

* ``CREATE EXTENSION timescaledb`` becomes a SQL ``time_bucket(interval, timestamptz)`` built on
  ``date_bin`` (origin 2000-01-03 00:00 UTC, TimescaleDB's default);
* ``create_hypertable`` is dropped (the metrics table stays a plain table);
* the continuous aggregates become plain materialized views created ``WITH DATA``;
* the add/remove continuous-aggregate-policy calls become no-ops.

Every replaced snippet must be found (exact count), so a changed upstream migration fails loudly.

Usage: patch_migrations.py ALEMBIC_DIR   (the copied ``alembic/`` directory; edited in place)
"""

from __future__ import annotations

import sys
from pathlib import Path

REVISION = "99c3877d0f10"

# 2000-01-03 00:00:00 UTC as an epoch, to keep colons out of sa.text() (bind-parameter syntax)
TIME_BUCKET_SQL = (
    "CREATE OR REPLACE FUNCTION time_bucket(bucket_width interval, ts timestamptz) "
    "RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS "
    "$$ SELECT date_bin(bucket_width, ts, to_timestamp(946857600)) $$"
)

# (old, new, expected number of occurrences)
REPLACEMENTS: list[tuple[str, str, int]] = [
    (
        'op.execute(sa.text("CREATE EXTENSION IF NOT EXISTS timescaledb"))',
        f'op.execute(sa.text("{TIME_BUCKET_SQL}"))  # patched: no TimescaleDB',
        1,
    ),
    (
        "op.execute(sa.text(\"SELECT create_hypertable('job_submission_metrics', by_range('time'))\"))",
        "pass  # patched: no hypertable without TimescaleDB",
        1,
    ),
    ("    WITH (timescaledb.continuous) AS\n", "    AS\n", 1),
    ("    WITH NO DATA\n", "    WITH DATA\n", 1),
    (
        """add_continuous_aggregate_policy_template = dedent(
    \"\"\"
    SELECT add_continuous_aggregate_policy('{mat_view_name}',
        start_offset => INTERVAL '{start_offset}',
        end_offset => INTERVAL '{end_offset}',
        schedule_interval => INTERVAL '{schedule_interval}',
        initial_start => '{initial_start}')
    \"\"\"
)""",
        'add_continuous_aggregate_policy_template = "SELECT 1"  # patched: no-op without TimescaleDB',
        1,
    ),
    (
        "remove_continuous_aggregate_policy_template = \"SELECT remove_continuous_aggregate_policy('{mat_view_name}')\"",
        'remove_continuous_aggregate_policy_template = "SELECT 1"  # patched: no-op without TimescaleDB',
        1,
    ),
]

FORBIDDEN_AFTER = ["timescaledb", "create_hypertable", "add_continuous_aggregate_policy(", "remove_continuous_aggregate_policy("]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    alembic_dir = Path(argv[1])
    matches = sorted((alembic_dir / "versions").glob(f"*{REVISION}*.py"))
    if len(matches) != 1:
        print(f"patch_migrations: expected exactly one migration file for {REVISION}, found {matches}", file=sys.stderr)
        return 1
    path = matches[0]
    text = path.read_text()
    for old, new, expected in REPLACEMENTS:
        found = text.count(old)
        if found != expected:
            print(
                f"patch_migrations: snippet found {found} time(s), expected {expected} in {path.name}:\n{old}",
                file=sys.stderr,
            )
            return 1
        text = text.replace(old, new)
    leftovers = [word for word in FORBIDDEN_AFTER if word in text.replace("no TimescaleDB", "")]
    if leftovers:
        print(f"patch_migrations: TimescaleDB constructs left after patching: {leftovers}", file=sys.stderr)
        return 1
    # no other migration may need TimescaleDB either
    for other in sorted((alembic_dir / "versions").glob("*.py")):
        if other != path and "timescaledb" in other.read_text().lower():
            print(f"patch_migrations: {other.name} also uses TimescaleDB; extend this patch", file=sys.stderr)
            return 1
    path.write_text(text)
    print(f"patch_migrations: patched {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
