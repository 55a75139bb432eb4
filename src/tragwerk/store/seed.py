"""`tragwerk seed`: realistic data in bulk with COPY, in one transaction.

For large batches the secondary indexes of the case tables are dropped, the rows
copied, and the indexes rebuilt from their own definitions (read from pg_indexes):
one index build is many times faster than a million index inserts, and a failure
rolls everything back, indexes included.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tragwerk.domain.cases import Priority, SlaPolicy, Status

CHUNK = 50_000
REBUILD_INDEXES_FROM = 100_000

SITES = [
    ("DE", "Europe/Berlin", ["Berlin", "Hamburg", "Munich", "Cologne", "Leipzig"]),
    ("AT", "Europe/Vienna", ["Vienna", "Graz", "Linz"]),
    ("CH", "Europe/Zurich", ["Zurich", "Basel", "Bern"]),
    ("FR", "Europe/Paris", ["Paris", "Lyon", "Lille"]),
    ("GB", "Europe/London", ["London", "Leeds", "Glasgow"]),
    ("US", "America/New_York", ["New York", "Boston", "Atlanta"]),
    ("US", "America/Chicago", ["Chicago", "Dallas"]),
    ("JP", "Asia/Tokyo", ["Tokyo", "Osaka"]),
    ("IN", "Asia/Kolkata", ["Pune", "Bengaluru"]),
    ("BR", "America/Sao_Paulo", ["Sao Paulo", "Recife"]),
]
SUBJECTS = [
    "Printer",
    "VPN",
    "Laptop",
    "Invoice",
    "Badge",
    "Email",
    "Payroll",
    "Shipment",
    "Contract",
    "Server",
    "Account",
    "Phone",
    "Delivery",
    "Refund",
    "Access",
]
PROBLEMS = [
    "does not start",
    "is slow",
    "was rejected",
    "is missing",
    "shows an error",
    "needs renewal",
    "is locked",
    "arrived damaged",
    "was charged twice",
    "cannot connect",
    "needs approval",
    "times out",
]
STATUS_WEIGHTS = [
    (Status.OPEN, 15),
    (Status.IN_PROGRESS, 15),
    (Status.WAITING, 10),
    (Status.RESOLVED, 20),
    (Status.CLOSED, 40),
]
PRIORITY_WEIGHTS = [
    (Priority.LOW, 20),
    (Priority.NORMAL, 55),
    (Priority.HIGH, 20),
    (Priority.CRITICAL, 5),
]
SEEDED_TABLES = ("cases", "case_assignees", "case_history")


async def _reserve(raw: Any, sequence: str, count: int) -> int:
    """Reserve `count` values of a sequence and return the first."""
    last: int = await raw.fetchval(
        "SELECT setval($1::regclass, nextval($1::regclass) + $2 - 1)", sequence, count
    )
    return last - count + 1


async def _ensure_reference(
    raw: Any, rng: random.Random, users_wanted: int
) -> tuple[list[int], list[int]]:
    location_ids = [r["id"] for r in await raw.fetch("SELECT id FROM locations ORDER BY id")]
    if len(location_ids) < 50:
        rows: list[tuple[Any, ...]] = []
        for country, zone, cities in SITES:
            for city in cities:
                for site in range(1, 3):
                    rows.append((f"{city} {site}", country, zone))
        await raw.copy_records_to_table(
            "locations", records=rows, columns=["name", "country_code", "time_zone"]
        )
        location_ids = [r["id"] for r in await raw.fetch("SELECT id FROM locations ORDER BY id")]
    agent_role = await raw.fetchval("SELECT id FROM roles WHERE name = 'agent'")
    have = await raw.fetchval("SELECT count(*) FROM users WHERE email LIKE '%@seed.tragwerk.test'")
    if have < users_wanted:
        start = await raw.fetchval("SELECT coalesce(max(id), 0) + 1 FROM users")
        agents: list[tuple[Any, ...]] = [
            (
                f"agent{start + i}@seed.tragwerk.test",
                f"Agent {start + i}",
                agent_role,
                rng.choice(location_ids),
                True,
            )
            for i in range(users_wanted - have)
        ]
        await raw.copy_records_to_table(
            "users", records=agents, columns=["email", "name", "role_id", "location_id", "active"]
        )
    user_ids = [
        r["id"]
        for r in await raw.fetch("SELECT id FROM users WHERE email LIKE '%@seed.tragwerk.test'")
    ]
    return location_ids, user_ids


def _weighted(rng: random.Random, weights: list[tuple[Any, int]], n: int) -> list[Any]:
    values = [v.value for v, _ in weights]
    return rng.choices(values, weights=[w for _, w in weights], k=n)


def _chunk_rows(
    rng: random.Random,
    first_id: int,
    first_number: int,
    n: int,
    location_ids: list[int],
    user_ids: list[int],
    sla: SlaPolicy,
    now: datetime,
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    statuses = _weighted(rng, STATUS_WEIGHTS, n)
    priorities = _weighted(rng, PRIORITY_WEIGHTS, n)
    sla_delta = {p.value: timedelta(hours=float(h)) for p, h in sla.hours.items()}
    two_years = 2 * 365 * 86400
    cases, assignees, history = [], [], []
    for i in range(n):
        case_id = first_id + i
        created = now - timedelta(seconds=rng.random() * two_years)
        priority = priorities[i]
        reporter = rng.choice(user_ids)
        title = f"{rng.choice(SUBJECTS)} {rng.choice(PROBLEMS)} ({rng.randrange(1, 10_000)})"
        cases.append(
            (
                case_id,
                f"C-{first_number + i}",
                title,
                "",
                statuses[i],
                priority,
                created + sla_delta[priority],
                rng.choice(location_ids),
                reporter,
                created,
                created,
                1,
            )
        )
        for user_id in set(rng.sample(user_ids, k=rng.choice((1, 1, 2)))):
            assignees.append((case_id, user_id, created))
        history.append((case_id, reporter, "created", '{"seeded": true}', created))
    return cases, assignees, history


async def seed(
    engine: AsyncEngine,
    cases: int,
    *,
    sla: SlaPolicy,
    users: int | None = None,
    random_seed: int = 7,
    progress: Callable[[int], object] = lambda _n: None,
    phase: Callable[[str], object] = lambda _text: None,
    now: datetime | None = None,
) -> None:
    """Add `cases` cases (with assignees and history) and the users and locations they need."""
    rng = random.Random(random_seed)  # noqa: S311 - test data, not secrets
    now = now or datetime.now(UTC)
    users_wanted = users if users is not None else max(50, min(5_000, cases // 200))
    async with engine.begin() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        await raw.execute("SET LOCAL maintenance_work_mem = '256MB'")
        location_ids, user_ids = await _ensure_reference(raw, rng, users_wanted)
        rebuild: list[str] = []
        if cases >= REBUILD_INDEXES_FROM:
            rebuild = await _drop_secondary_indexes(raw)
        first_id = await _reserve(raw, "cases_id_seq", cases)
        first_number = await _reserve(raw, "case_number_seq", cases)
        done = 0
        for rows in _chunks(rng, first_id, first_number, cases, location_ids, user_ids, sla, now):
            case_rows, assignee_rows, history_rows = rows
            await raw.copy_records_to_table(
                "cases",
                records=case_rows,
                columns=[
                    "id",
                    "number",
                    "title",
                    "description",
                    "status",
                    "priority",
                    "sla_due_at",
                    "location_id",
                    "reporter_id",
                    "created_at",
                    "updated_at",
                    "version",
                ],
            )
            await raw.copy_records_to_table(
                "case_assignees",
                records=assignee_rows,
                columns=["case_id", "user_id", "assigned_at"],
            )
            await raw.copy_records_to_table(
                "case_history",
                records=history_rows,
                columns=["case_id", "actor_user_id", "action", "changes", "at"],
            )
            done += len(case_rows)
            progress(len(case_rows))
        if rebuild:
            phase(f"rebuilding {len(rebuild)} indexes")
        for definition in rebuild:
            await raw.execute(definition)
        phase("committing")
    phase("updating planner statistics")
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        for table in ("locations", "users", *SEEDED_TABLES):
            await raw.execute(f"ANALYZE {table}")


def _chunks(
    rng: random.Random,
    first_id: int,
    first_number: int,
    total: int,
    location_ids: list[int],
    user_ids: list[int],
    sla: SlaPolicy,
    now: datetime,
) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    offset = 0
    while offset < total:
        n = min(CHUNK, total - offset)
        yield _chunk_rows(
            rng, first_id + offset, first_number + offset, n, location_ids, user_ids, sla, now
        )
        offset += n


async def _drop_secondary_indexes(raw: Any) -> list[str]:
    """Drop the non-unique indexes of the seeded tables; return their CREATE statements."""
    rows = await raw.fetch(
        """
        SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS definition
        FROM pg_index i
        JOIN pg_class t ON t.oid = i.indrelid
        WHERE t.relname = ANY($1::text[]) AND NOT i.indisunique AND NOT i.indisprimary
        """,
        list(SEEDED_TABLES),
    )
    for row in rows:
        await raw.execute(f"DROP INDEX {row['name']}")
    return [row["definition"] for row in rows]
