from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from tragwerk.api.errors import PreconditionRequired
from tragwerk.api.routes.paging import expected_version
from tragwerk.domain.cases import Status
from tragwerk.domain.errors import InvalidCursor, InvalidInput
from tragwerk.store import cursor
from tragwerk.store.queries.cases import CaseFilter, list_query


def test_cursor_round_trip() -> None:
    stamp = datetime(2026, 5, 1, 12, 30, 1, 123456, tzinfo=UTC)
    token = cursor.encode("created", stamp, 42)
    assert cursor.decode_timestamp(token, "created") == (stamp, 42)


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "%%%",
        base64.urlsafe_b64encode(b'{"s":"created"}').decode(),
        base64.urlsafe_b64encode(b'{"s":"created","k":"yesterday","i":1}').decode(),
        base64.urlsafe_b64encode(b'{"s":"created","k":"2026-01-01T00:00:00","i":1}').decode(),
        base64.urlsafe_b64encode(
            b'{"s":"created","k":"2026-01-01T00:00:00+00:00","i":-1}'
        ).decode(),
        base64.urlsafe_b64encode(b"[1,2,3]").decode(),
        "A" * 600,
    ],
)
def test_foreign_cursors_are_refused(token: str) -> None:
    with pytest.raises(InvalidCursor):
        cursor.decode_timestamp(token, "created")


def test_cursor_of_another_sort_is_refused() -> None:
    token = cursor.encode("sla_due", datetime.now(UTC), 1)
    with pytest.raises(InvalidCursor, match="sla_due"):
        cursor.decode_timestamp(token, "created")


def test_list_query_is_keyset_not_offset() -> None:
    after = cursor.encode("created", datetime.now(UTC), 99)
    sql, args = list_query(CaseFilter(status=(Status.OPEN,)), "created", after, 50)
    assert "OFFSET" not in sql
    assert "(cases.created_at, cases.id) < (" in sql
    assert "ORDER BY cases.created_at DESC, cases.id DESC" in sql
    assert "LIMIT $" in sql
    assert args[0] == ["open"]
    assert args[-1] == 51  # one row more than the page tells whether another page follows
    assert 99 in args


def test_sla_sort_pages_forward_in_deadline_order() -> None:
    after = cursor.encode("sla_due", datetime.now(UTC), 5)
    sql, _args = list_query(CaseFilter(), "sla_due", after, 10)
    assert "(cases.sla_due_at, cases.id) > (" in sql
    assert "ORDER BY cases.sla_due_at ASC, cases.id ASC" in sql


def test_title_search_escapes_like_wildcards() -> None:
    _sql, args = list_query(CaseFilter(title_contains="100%_x"), "created", None, 10)
    assert "%100\\%\\_x%" in args


def test_one_statement_per_shape_whatever_the_values() -> None:
    one, _ = list_query(CaseFilter(status=(Status.OPEN,), location_id=1), "created", None, 5)
    two, _ = list_query(
        CaseFilter(status=(Status.OPEN, Status.WAITING), location_id=9), "created", None, 50
    )
    assert one == two  # the prepared statement is reused across values


def test_versions_come_from_if_match_or_body() -> None:
    assert expected_version(3, None) == (3, False)
    assert expected_version(None, '"7"') == (7, True)
    assert expected_version(None, 'W/"7"') == (7, True)
    with pytest.raises(PreconditionRequired):
        expected_version(None, None)
    with pytest.raises(InvalidInput):
        expected_version(None, '"seven"')
    with pytest.raises(InvalidInput):
        expected_version(2, '"3"')
