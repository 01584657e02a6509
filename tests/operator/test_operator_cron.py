"""training.schedule: five-field cron in UTC."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fusionrec.operator.cron import CronSchedule


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize("expression,after,expected", [
    ("0 3 * * *", "2025-01-01T02:59:30", "2025-01-01T03:00:00"),
    ("0 3 * * *", "2025-01-01T03:00:00", "2025-01-02T03:00:00"),
    ("*/15 * * * *", "2025-01-01T10:07:00", "2025-01-01T10:15:00"),
    ("30 9 * * mon-fri", "2025-01-03T10:00:00", "2025-01-06T09:30:00"),  # Friday -> Monday
    ("0 0 1 jan *", "2025-03-01T00:00:00", "2026-01-01T00:00:00"),
    ("0 0 29 2 *", "2025-03-01T00:00:00", "2028-02-29T00:00:00"),
    ("0 12 13 * 5", "2025-06-01T00:00:00", "2025-06-06T12:00:00"),  # day 13 OR a Friday (Vixie cron)
    ("0 0 * * 7", "2025-01-01T00:00:00", "2025-01-05T00:00:00"),  # 7 is Sunday
    ("5,10-12/2 8 * * *", "2025-01-01T08:06:00", "2025-01-01T08:10:00"),
])
def test_next_after(expression, after, expected):
    assert CronSchedule.parse(expression).next_after(at(after)) == at(expected)


@pytest.mark.parametrize("expression,words", [
    ("0 3 * *", "has 4 fields"),
    ("60 * * * *", "minute '60'"),
    ("0 5-3 * * *", "runs backwards"),
    ("0 0 * foo *", "month 'foo'"),
    ("*/0 * * * *", "step '0'"),
])
def test_bad_expressions_say_what_is_wrong(expression, words):
    with pytest.raises(ValueError, match=words):
        CronSchedule.parse(expression)


def test_a_day_that_never_comes():
    with pytest.raises(ValueError, match="never fires"):
        CronSchedule.parse("0 0 31 2 *").next_after(at("2025-01-01T00:00:00"))
