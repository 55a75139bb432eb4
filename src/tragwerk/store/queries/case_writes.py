"""The statements of every case write, compiled once, run on asyncpg in one transaction.

A write used to run about seven statements through SQLAlchemy's execution machinery
(checks, insert, assignees, history, read-back, job): 9 ms of API CPU per created case,
most of it SQLAlchemy building and executing statements, not PostgreSQL. Here each
write is at most three statements of its own plus the job, each compiled once
(store.hot.CompiledQuery) and sent on the transaction's asyncpg connection:

- create: ONE statement checks the location and the users, inserts the case, its
  assignees and its history row, and returns the case (`CREATE`); the checks only
  decide whether anything is inserted, and only when they refuse does a second query
  find out what was wrong, for the error message (`DIAGNOSE`);
- update, status, assign, unassign: the case locked (`LOCK`, which also gives the
  version and status to check in Python, with the domain's own rules and messages),
  for assignments the assignee change (`ADD_ASSIGNEES` folds the user checks in the
  same way), then ONE statement that updates the case, writes the history row and
  returns the case with its assignees (`bump`).

The SQL is written out rather than built with SQLAlchemy Core: these are CTEs with
several data-modifying parts, which read more plainly as SQL, and the tests run each
of them (tests/integration/test_case_writes.py counts the round trips of every path).
Every parameter is cast, so PostgreSQL never has to guess a type.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import text

from tragwerk.store.hot import CompiledQuery, Tx

# The case as the API shows it, in the order of store.queries.cases.DETAIL_COLUMNS.
_CASE = (
    "id, number, title, status, priority, sla_due_at, location_id, reporter_id,"
    " created_at, updated_at, version, description"
)
CASE_FIELDS = tuple(name.strip() for name in _CASE.split(","))


def _case_of(alias: str) -> str:
    return ", ".join(f"{alias}.{name}" for name in CASE_FIELDS)


# The case's assignees as three arrays, in the order the listing shows them
# (case_assignees_pkey, users_pkey).
_ASSIGNEES_OF = """
    ARRAY(SELECT a.user_id FROM case_assignees a
          WHERE a.case_id = {case} ORDER BY a.assigned_at, a.user_id) AS assignee_ids,
    ARRAY(SELECT u.name FROM case_assignees a JOIN users u ON u.id = a.user_id
          WHERE a.case_id = {case} ORDER BY a.assigned_at, a.user_id) AS assignee_names,
    ARRAY(SELECT a.assigned_at FROM case_assignees a
          WHERE a.case_id = {case} ORDER BY a.assigned_at, a.user_id) AS assigned_at
"""

_HISTORY_COLUMNS = (
    "case_id, action, changes, actor_user_id, actor_service_client_id, event_id, event_type"
)
_HISTORY_VALUES = (
    "CAST(:action AS text), CAST(:changes AS jsonb), CAST(:actor_user_id AS bigint),"
    " CAST(:actor_service_client_id AS bigint), CAST(:event_id AS text),"
    " CAST(:event_type AS text)"
)

# Create: every check folded into the insert. `people` are the reporter and the
# assignees (distinct); the case is inserted only if the location exists and every one
# of them exists and is active. Assignees and history are written from the new row;
# the created_at of the case is the transaction's now(), which is also every
# assignee's assigned_at. No row back: a check refused (DIAGNOSE says which).
CREATE = CompiledQuery(
    text(f"""
WITH people AS (
    SELECT id, name, active FROM users WHERE id = ANY(CAST(:people AS bigint[]))
), allowed AS (
    SELECT EXISTS (SELECT 1 FROM locations WHERE id = CAST(:location_id AS bigint))
       AND (SELECT count(*) FROM people WHERE active)
           = cardinality(CAST(:people AS bigint[])) AS ok
), new_case AS (
    INSERT INTO cases (title, description, priority, location_id, reporter_id, sla_due_at)
    SELECT CAST(:title AS text), CAST(:description AS text), CAST(:priority AS text),
           CAST(:location_id AS bigint), CAST(:reporter_id AS bigint),
           now() + CAST(:sla AS interval)
    FROM allowed WHERE allowed.ok
    RETURNING {_CASE}
), assigned AS (
    INSERT INTO case_assignees (case_id, user_id)
    SELECT new_case.id, a.user_id
    FROM new_case, unnest(CAST(:assignees AS bigint[])) AS a(user_id)
), history AS (
    INSERT INTO case_history ({_HISTORY_COLUMNS})
    SELECT new_case.id, {_HISTORY_VALUES} FROM new_case
)
SELECT {_case_of("new_case")},
       ARRAY(SELECT p.id FROM people p) AS people_ids,
       ARRAY(SELECT p.name FROM people p) AS people_names
FROM new_case
""")
)

# Why CREATE or ADD_ASSIGNEES wrote nothing: whether the location exists, which of the
# users exist, which are deactivated (the cold path, for the error message).
DIAGNOSE = CompiledQuery(
    text("""
SELECT EXISTS (SELECT 1 FROM locations WHERE id = CAST(:location_id AS bigint)) AS location,
       ARRAY(SELECT id FROM users WHERE id = ANY(CAST(:people AS bigint[]))) AS found,
       ARRAY(SELECT id FROM users
             WHERE id = ANY(CAST(:people AS bigint[])) AND NOT active) AS inactive
""")
)

# The case, locked for the rest of the transaction (cases_pkey): its current fields
# decide, in Python, whether the change is allowed and what it changes.
LOCK = CompiledQuery(
    text(f"SELECT {_CASE} FROM cases WHERE id = CAST(:case_id AS bigint) FOR UPDATE")
)

# The case as the API shows it, assignees included, for a change that changed nothing.
READ = CompiledQuery(
    text(f"""
SELECT {_case_of("c")}, {_ASSIGNEES_OF.format(case="c.id")}
FROM cases c WHERE c.id = CAST(:case_id AS bigint)
""")
)

# Assign: the users' checks folded in as in CREATE; only new assignments are returned.
ADD_ASSIGNEES = CompiledQuery(
    text("""
WITH people AS (
    SELECT id, active FROM users WHERE id = ANY(CAST(:user_ids AS bigint[]))
), allowed AS (
    SELECT count(*) FILTER (WHERE active) = cardinality(CAST(:user_ids AS bigint[])) AS ok
    FROM people
), added AS (
    INSERT INTO case_assignees (case_id, user_id)
    SELECT CAST(:case_id AS bigint), people.id FROM people, allowed WHERE allowed.ok
    ON CONFLICT DO NOTHING
    RETURNING user_id
)
SELECT allowed.ok, ARRAY(SELECT user_id FROM added ORDER BY user_id) AS added FROM allowed
""")
)

REMOVE_ASSIGNEE = CompiledQuery(
    text("""
DELETE FROM case_assignees
WHERE case_id = CAST(:case_id AS bigint) AND user_id = CAST(:user_id AS bigint)
RETURNING user_id
""")
)

# Columns an update may set, with the cast of each (sla_due_at follows the priority:
# a new priority brings a new deadline from the case's creation).
_SETTABLE = {
    "title": "CAST(:title AS text)",
    "description": "CAST(:description AS text)",
    "priority": "CAST(:priority AS text)",
    "location_id": "CAST(:location_id AS bigint)",
    "status": "CAST(:status AS text)",
    # The parameter is the SLA interval of the new priority, from the case's creation.
    "sla_due_at": "created_at + CAST(:sla_due_at AS interval)",
}


@lru_cache(maxsize=64)
def bump(columns: frozenset[str]) -> CompiledQuery:
    """Update `columns` of a locked case, count its version up, write the history row,
    and return the case with its assignees: one statement per set of columns."""
    unknown = columns - _SETTABLE.keys()
    if unknown:
        raise ValueError(f"not settable: {sorted(unknown)}")
    sets = "".join(f"{name} = {_SETTABLE[name]}, " for name in sorted(columns))
    return CompiledQuery(
        text(f"""
WITH changed AS (
    UPDATE cases SET {sets}version = version + 1, updated_at = now()
    WHERE id = CAST(:case_id AS bigint)
    RETURNING {_CASE}
), history AS (
    INSERT INTO case_history ({_HISTORY_COLUMNS})
    SELECT changed.id, {_HISTORY_VALUES} FROM changed
)
SELECT {_case_of("changed")}, {_ASSIGNEES_OF.format(case="changed.id")}
FROM changed
""")
    )


def case_row(record: Any) -> dict[str, Any]:
    """The case as the API shows it, from a row of READ or bump."""
    case = {name: record[name] for name in CASE_FIELDS}
    case["assignees"] = [
        {"user_id": user_id, "name": name, "assigned_at": at}
        for user_id, name, at in zip(
            record["assignee_ids"], record["assignee_names"], record["assigned_at"], strict=True
        )
    ]
    return case


def created_row(record: Any, assignees: Sequence[int]) -> dict[str, Any]:
    """The case as the API shows it, from the row of CREATE: assigned when it was created,
    assignees in the listing's order (one assigned_at for all, so by user id)."""
    case = {name: record[name] for name in CASE_FIELDS}
    names = dict(zip(record["people_ids"], record["people_names"], strict=True))
    at = record["created_at"]
    case["assignees"] = [
        {"user_id": user_id, "name": names[user_id], "assigned_at": at}
        for user_id in sorted(assignees)
    ]
    return case


async def read(tx: Tx, case_id: int) -> dict[str, Any] | None:
    record = await tx.fetchrow(READ, {"case_id": case_id})
    return None if record is None else case_row(record)
