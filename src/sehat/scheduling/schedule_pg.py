"""A practitioner's schedule at a facility read in one statement on PostgreSQL, for the hot paths (slot search,
booking): weekly hours, leave and extra sessions, the facility's holidays, and the time already taken. The rows
come back as JSON text or arrays and are turned into the shapes ``service.assemble_working_time`` reads, so
both backends compute working time with the same code."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.db import driver_connection
from sehat.scheduling import availability


def schedule_columns(
    organization: str,
    practitioner: str,
    facility: str,
    window_start: str,
    window_end: str,
    first_day: str,
    last_day: str,
) -> str:
    """The select-list columns ``rules``, ``exceptions`` and ``holidays`` over the given placeholders, for the
    statements that read a schedule together with other things. Only placeholder names are formatted in."""
    return f"""
  (SELECT coalesce(json_agg(json_build_array(
      weekday, starts, ends, slot_minutes, buffer_minutes, valid_from, valid_until)), '[]')::text
     FROM availability_rules
     WHERE organization_id = {organization} AND practitioner_id = {practitioner} AND facility_id = {facility}) AS rules,
  (SELECT coalesce(json_agg(json_build_array(
      kind, extract(epoch FROM starts_at), extract(epoch FROM ends_at), facility_id)), '[]')::text
     FROM availability_exceptions
     WHERE organization_id = {organization} AND practitioner_id = {practitioner}
       AND starts_at < {window_end} AND ends_at > {window_start}
       AND (facility_id IS NULL OR facility_id = {facility})) AS exceptions,
  (SELECT coalesce(array_agg(day), '{{}}') FROM facility_holidays
     WHERE organization_id = {organization} AND facility_id = {facility}
       AND day BETWEEN {first_day} AND {last_day}) AS holidays"""  # noqa: S608


# Taken time: active appointments, and holds that have not run out. $1 organization, $2 practitioner, $4/$5 the
# window, $8 now.
_TAKEN = """
  FROM appointments
  WHERE organization_id = $1 AND practitioner_id = $2 AND start_at < $5 AND end_at > $4
    AND status IN ('held', 'booked', 'checked_in', 'needs_reschedule') AND (status <> 'held' OR hold_expires_at > $8)
"""

# $1 organization, $2 practitioner, $3 facility, $4/$5 the window, $6/$7 its days, $8 now
_SCHEDULE = f"""
SELECT {schedule_columns("$1", "$2", "$3", "$4", "$5", "$6", "$7")},
  (SELECT coalesce(array_agg(start_at ORDER BY start_at), '{{}}') {_TAKEN}) AS busy_starts,
  (SELECT coalesce(array_agg(end_at ORDER BY start_at), '{{}}') {_TAKEN}) AS busy_ends
"""


@dataclass(frozen=True)
class Hours:
    weekday: int
    starts: time
    ends: time
    slot_minutes: int
    buffer_minutes: int
    valid_from: date | None
    valid_until: date | None


@dataclass(frozen=True)
class Exception_:
    kind: str
    starts_at: datetime
    ends_at: datetime
    facility_id: uuid.UUID | None


def hours(raw: str) -> list[Hours]:
    return [
        Hours(
            weekday,
            time.fromisoformat(starts),
            time.fromisoformat(ends),
            slot,
            buffer,
            date.fromisoformat(valid_from) if valid_from else None,
            date.fromisoformat(valid_until) if valid_until else None,
        )
        for weekday, starts, ends, slot, buffer, valid_from, valid_until in orjson.loads(raw)
    ]


def exceptions(raw: str) -> list[Exception_]:
    utc = ZoneInfo("UTC")
    return [
        Exception_(
            kind,
            datetime.fromtimestamp(float(starts), utc),
            datetime.fromtimestamp(float(ends), utc),
            uuid.UUID(facility) if facility else None,
        )
        for kind, starts, ends, facility in orjson.loads(raw)
    ]


@dataclass(frozen=True)
class Schedule:
    rules: list[Hours]
    exceptions: list[Exception_]
    holiday_days: list[date]
    busy: list[availability.Interval]


async def read_schedule(
    session: AsyncSession,
    organization_id: uuid.UUID,
    practitioner_id: uuid.UUID,
    facility_id: uuid.UUID,
    window: availability.Interval,
    first_day: date,
    last_day: date,
    now: datetime,
) -> Schedule:
    driver = await session.run_sync(driver_connection)
    row = await driver.fetchrow(
        _SCHEDULE, organization_id, practitioner_id, facility_id, window.start, window.end, first_day, last_day, now
    )
    busy = [
        availability.stored_interval(start, end)
        for start, end in zip(row["busy_starts"], row["busy_ends"], strict=True)
    ]
    return Schedule(hours(row["rules"]), exceptions(row["exceptions"]), list(row["holidays"]), busy)
