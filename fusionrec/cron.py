"""Five-field cron expressions (minute hour day-of-month month day-of-week), evaluated in UTC.

Only what `training.schedule` needs: numbers, `*`, ranges `a-b`, steps `*/n` and `a-b/n`, lists, and
month/day names. Day-of-month and day-of-week combine as in Vixie cron: when both are restricted, a day
matching either fires.

The one parser: `fusionrec.spec` validates `training.schedule` with it (so a manifest with a bad schedule is
refused at the edge, by the CLI and the operator alike) and the operator computes next-run times with it.
Standard library only (the operator image has no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

RETRAIN_BASE_MAX = 26  # + "-r" + yyyymmddhhmm = 40, the spec's version length

_MONTHS = {n: i + 1 for i, n in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}
_DAYS = {n: i for i, n in enumerate("sun mon tue wed thu fri sat".split())}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}), ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS))
_HORIZON_DAYS = 366 * 5  # long enough for a Feb 29 schedule


def _value(text: str, label: str, lo: int, hi: int, names: dict[str, int]) -> int:
    key = text.lower()
    if key in names:
        return names[key]
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise ValueError(f"{label} {text!r} is not a number in {lo}..{hi}")
    return int(text)


def _field(text: str, label: str, lo: int, hi: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = _value(step_text, f"{label} step", 1, hi, {}) if step_text else 1
        if body == "*":
            first, last = lo, hi
        elif "-" in body:
            a, _, b = body.partition("-")
            first, last = _value(a, label, lo, hi, names), _value(b, label, lo, hi, names)
            if first > last:
                raise ValueError(f"{label} range {body!r} runs backwards")
        else:
            first = _value(body, label, lo, hi, names)
            last = hi if step_text else first
        values.update(range(first, last + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class CronSchedule:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool
    weekdays_restricted: bool

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        parts = expression.split()
        if len(parts) != 5:
            raise ValueError(f"{expression!r} has {len(parts)} fields; cron needs 5 (minute hour day month weekday)")
        sets = [_field(p, label, lo, hi, names) for p, (label, lo, hi, names) in zip(parts, _FIELDS, strict=True)]
        weekdays = frozenset(d % 7 for d in sets[4])  # 7 is Sunday too
        return cls(sets[0], sets[1], sets[2], sets[3], weekdays,
                   days_restricted=parts[2] != "*", weekdays_restricted=parts[4] != "*")

    def _day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        by_date = day.day in self.days
        by_weekday = (day.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return by_date or by_weekday
        return by_date and by_weekday

    def next_after(self, moment: datetime) -> datetime:
        """The first firing time strictly after `moment` (UTC, whole minutes)."""
        moment = moment.astimezone(UTC)
        start = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
        times = sorted(time(h, m) for h in self.hours for m in self.minutes)
        for offset in range(_HORIZON_DAYS):
            day = start.date() + timedelta(days=offset)
            if not self._day_matches(day):
                continue
            for at in times:
                candidate = datetime.combine(day, at, tzinfo=UTC)
                if candidate >= start:
                    return candidate
        raise ValueError(f"the schedule never fires within {_HORIZON_DAYS} days")


def retrain_version(base: str, moment: datetime) -> str:
    """A retrain's version, scheduled (the operator) or manual (`fusionrec retrain`): `<spec.version>-r<UTC
    yyyymmddhhmm>`, the base cut so it stays within the spec's 40 characters."""
    return f"{base[:RETRAIN_BASE_MAX].rstrip('-.')}-r{moment.astimezone(UTC):%Y%m%d%H%M}"
