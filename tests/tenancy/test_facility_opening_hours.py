"""Facility opening hours: weekly intervals on the facility's own wall clock, validated on the way in, and
``is_open`` reading an instant the way a person at the facility would, daylight-saving changes included."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from sehat.tenancy.service import is_open
from tests.conftest import build_tenant

WEEKDAYS = range(5)
# Monday to Friday 08:00-20:00, Saturday 09:00-13:00, Sunday closed.
CLINIC_WEEK = [{"weekday": day, "opens": "08:00", "closes": "20:00"} for day in WEEKDAYS] + [
    {"weekday": 5, "opens": "09:00", "closes": "13:00"}
]


def utc(year: int, month: int, day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def _field_names(body: dict[str, Any]) -> set[str]:
    return {error["field"] for error in body.get("errors", [])}


# --- is_open ---------------------------------------------------------------------------------------------------


def test_open_from_opening_inclusive_to_closing_exclusive_on_the_local_clock() -> None:
    # Asia/Karachi is UTC+5 all year. Wednesday 11 March 2026.
    assert not is_open(CLINIC_WEEK, "Asia/Karachi", utc(2026, 3, 11, 2, 59, 59))  # 07:59:59
    assert is_open(CLINIC_WEEK, "Asia/Karachi", utc(2026, 3, 11, 3, 0))  # 08:00
    assert is_open(CLINIC_WEEK, "Asia/Karachi", utc(2026, 3, 11, 14, 59, 59))  # 19:59:59
    assert not is_open(CLINIC_WEEK, "Asia/Karachi", utc(2026, 3, 11, 15, 0))  # 20:00
    # 22:30 UTC on Friday is 03:30 on Saturday there: the weekday is the local one.
    assert not is_open(CLINIC_WEEK, "Asia/Karachi", utc(2026, 3, 13, 22, 30))
    assert is_open(CLINIC_WEEK, "Asia/Karachi", utc(2026, 3, 14, 7, 59))  # Saturday 12:59
    assert not is_open(CLINIC_WEEK, "Asia/Karachi", utc(2026, 3, 14, 8, 0))  # Saturday 13:00
    assert not is_open(CLINIC_WEEK, "Asia/Karachi", utc(2026, 3, 15, 6, 0))  # Sunday 11:00


def test_a_day_with_a_break_a_day_to_midnight_and_a_week_with_no_hours() -> None:
    split = [
        {"weekday": 0, "opens": "08:00", "closes": "12:00"},
        {"weekday": 0, "opens": "14:00", "closes": "24:00"},
    ]
    monday = (2026, 3, 9)  # UTC itself, to read the clock directly
    assert is_open(split, "UTC", utc(*monday, 11, 59))
    assert not is_open(split, "UTC", utc(*monday, 12, 0))
    assert not is_open(split, "UTC", utc(*monday, 13, 59))
    assert is_open(split, "UTC", utc(*monday, 23, 59, 59))
    assert not is_open(split, "UTC", utc(2026, 3, 10, 0, 0))  # Tuesday has no interval
    assert not is_open([], "UTC", utc(*monday, 10, 0))


def test_london_hours_follow_the_wall_clock_across_the_2026_spring_change() -> None:
    # Clocks go forward at 01:00 UTC on Sunday 29 March 2026: GMT (UTC+0) to BST (UTC+1).
    assert not is_open(CLINIC_WEEK, "Europe/London", utc(2026, 3, 27, 7, 30))  # Friday 07:30 GMT
    assert is_open(CLINIC_WEEK, "Europe/London", utc(2026, 3, 30, 7, 30))  # Monday 08:30 BST
    assert is_open(CLINIC_WEEK, "Europe/London", utc(2026, 3, 27, 19, 30))  # Friday 19:30 GMT
    assert not is_open(CLINIC_WEEK, "Europe/London", utc(2026, 3, 30, 19, 30))  # Monday 20:30 BST
    # An interval across the skipped hour: 01:00-02:00 local never happens that night.
    night = [{"weekday": 6, "opens": "01:30", "closes": "02:30"}]
    assert not is_open(night, "Europe/London", utc(2026, 3, 29, 0, 59))  # 00:59 GMT
    assert is_open(night, "Europe/London", utc(2026, 3, 29, 1, 0))  # 02:00 BST
    assert is_open(night, "Europe/London", utc(2026, 3, 29, 1, 29))  # 02:29 BST
    assert not is_open(night, "Europe/London", utc(2026, 3, 29, 1, 30))  # 02:30 BST


def test_london_hours_in_the_hour_repeated_by_the_2026_autumn_change() -> None:
    # Clocks go back at 01:00 UTC on Sunday 25 October 2026: 01:00-02:00 local happens twice.
    night = [{"weekday": 6, "opens": "01:00", "closes": "01:30"}]
    assert is_open(night, "Europe/London", utc(2026, 10, 25, 0, 15))  # 01:15 BST
    assert not is_open(night, "Europe/London", utc(2026, 10, 25, 0, 45))  # 01:45 BST
    assert is_open(night, "Europe/London", utc(2026, 10, 25, 1, 15))  # 01:15 GMT, the second time
    assert not is_open(night, "Europe/London", utc(2026, 10, 25, 1, 45))  # 01:45 GMT
    assert is_open(CLINIC_WEEK, "Europe/London", utc(2026, 10, 23, 7, 30))  # Friday 08:30 BST
    assert not is_open(CLINIC_WEEK, "Europe/London", utc(2026, 10, 26, 7, 30))  # Monday 07:30 GMT


def test_new_york_hours_across_both_2026_changes() -> None:
    # EST (UTC-5) to EDT (UTC-4) on Sunday 8 March 2026; back to EST on Sunday 1 November 2026.
    assert not is_open(CLINIC_WEEK, "America/New_York", utc(2026, 3, 6, 12, 30))  # Friday 07:30 EST
    assert is_open(CLINIC_WEEK, "America/New_York", utc(2026, 3, 9, 12, 30))  # Monday 08:30 EDT
    assert is_open(CLINIC_WEEK, "America/New_York", utc(2026, 3, 6, 0, 30))  # Thursday 19:30 EST
    assert not is_open(CLINIC_WEEK, "America/New_York", utc(2026, 3, 10, 0, 30))  # Monday 20:30 EDT
    assert is_open(CLINIC_WEEK, "America/New_York", utc(2026, 10, 30, 12, 30))  # Friday 08:30 EDT
    assert not is_open(CLINIC_WEEK, "America/New_York", utc(2026, 11, 2, 12, 30))  # Monday 07:30 EST
    assert is_open(CLINIC_WEEK, "America/New_York", utc(2026, 11, 3, 0, 30))  # Monday 19:30 EST


def test_an_instant_without_a_timezone_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        is_open(CLINIC_WEEK, "UTC", datetime(2026, 3, 9, 10, 0))  # naive on purpose


# --- the facilities API ------------------------------------------------------------------------------------------


async def test_hours_are_set_at_creation_read_back_in_week_order_and_unknown_when_omitted(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await api.headers_for(tenant.admin_email)

    created = await api.client.post(
        "/api/v1/facilities",
        headers=headers,
        json={"name": "Alpha East", "code": "EAST", "timezone": "Europe/London", "opening_hours": CLINIC_WEEK[::-1]},
    )

    assert created.status_code == 201, created.text
    assert created.json()["opening_hours"] == CLINIC_WEEK
    fetched = await api.client.get(f"/api/v1/facilities/{created.json()['id']}", headers=headers)
    assert fetched.json()["opening_hours"] == CLINIC_WEEK
    without = await api.client.get(f"/api/v1/facilities/{tenant.facility_ids[0]}", headers=headers)
    assert without.json()["opening_hours"] is None


async def test_an_update_replaces_the_week_null_makes_it_unknown_and_omitting_it_keeps_it(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await api.headers_for(tenant.admin_email)
    url = f"/api/v1/facilities/{tenant.facility_ids[0]}"

    set_hours = await api.client.patch(url, headers=headers, json={"opening_hours": CLINIC_WEEK})
    renamed = await api.client.patch(url, headers=headers, json={"name": "Alpha North Wing"})
    never_open = await api.client.patch(url, headers=headers, json={"opening_hours": []})
    unknown = await api.client.patch(url, headers=headers, json={"opening_hours": None})

    assert set_hours.status_code == renamed.status_code == never_open.status_code == unknown.status_code == 200
    assert set_hours.json()["opening_hours"] == CLINIC_WEEK
    assert renamed.json()["opening_hours"] == CLINIC_WEEK
    assert never_open.json()["opening_hours"] == []
    assert unknown.json()["opening_hours"] is None
    assert (await api.client.get(url, headers=headers)).json()["opening_hours"] is None


@pytest.mark.parametrize(
    ("hours", "field"),
    [
        ([{"weekday": 0, "opens": "20:00", "closes": "08:00"}], "opening_hours.0.closes"),
        ([{"weekday": 0, "opens": "08:00", "closes": "08:00"}], "opening_hours.0.closes"),
        ([{"weekday": 7, "opens": "08:00", "closes": "20:00"}], "opening_hours.0.weekday"),
        ([{"weekday": "1", "opens": "08:00", "closes": "20:00"}], "opening_hours.0.weekday"),
        ([{"weekday": 0, "opens": "8:00", "closes": "20:00"}], "opening_hours.0.opens"),
        ([{"weekday": 0, "opens": "24:00", "closes": "24:00"}], "opening_hours.0.opens"),
        ([{"weekday": 0, "opens": "08:00", "closes": "20:00:00"}], "opening_hours.0.closes"),
        ([{"weekday": 0, "opens": "08:00", "closes": "24:01"}], "opening_hours.0.closes"),
        ([{"weekday": 0, "opens": "08:00"}], "opening_hours.0.closes"),
        ([{"weekday": 0, "opens": "08:00", "closes": "20:00", "note": "x"}], "opening_hours.0.note"),
        (
            [{"weekday": 2, "opens": "08:00", "closes": "13:00"}, {"weekday": 2, "opens": "12:30", "closes": "18:00"}],
            "opening_hours",
        ),
        ([{"weekday": 3, "opens": f"{hour:02}:00", "closes": f"{hour:02}:30"} for hour in range(5)], "opening_hours"),
        ({"weekday": 0, "opens": "08:00", "closes": "20:00"}, "opening_hours"),
    ],
    ids=[
        "closes-before-opens",
        "closes-at-opening",
        "weekday-7",
        "weekday-as-text",
        "hour-without-leading-zero",
        "opens-at-24",
        "seconds",
        "after-midnight",
        "missing-closes",
        "unknown-key",
        "overlap",
        "five-intervals-a-day",
        "not-a-list",
    ],
)
async def test_bad_hours_are_refused_with_422_naming_the_field_and_nothing_changes(
    api: Any, hours: Any, field: str
) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await api.headers_for(tenant.admin_email)
    url = f"/api/v1/facilities/{tenant.facility_ids[0]}"
    assert (await api.client.patch(url, headers=headers, json={"opening_hours": CLINIC_WEEK})).status_code == 200

    updated = await api.client.patch(url, headers=headers, json={"opening_hours": hours})
    created = await api.client.post(
        "/api/v1/facilities",
        headers=headers,
        json={"name": "Bad Hours", "code": "BAD", "timezone": "UTC", "opening_hours": hours},
    )

    for response in (updated, created):
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert _field_names(response.json()) == {field}
    assert (await api.client.get(url, headers=headers)).json()["opening_hours"] == CLINIC_WEEK
    codes = [facility["code"] for facility in await api.all_pages("/api/v1/facilities", headers)]
    assert "BAD" not in codes


async def test_touching_intervals_and_four_a_day_are_accepted(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await api.headers_for(tenant.admin_email)
    hours = [
        {"weekday": 4, "opens": "00:00", "closes": "06:00"},
        {"weekday": 4, "opens": "06:00", "closes": "12:00"},
        {"weekday": 4, "opens": "13:00", "closes": "18:00"},
        {"weekday": 4, "opens": "22:00", "closes": "24:00"},
    ]

    response = await api.client.patch(
        f"/api/v1/facilities/{tenant.facility_ids[0]}", headers=headers, json={"opening_hours": hours}
    )

    assert response.status_code == 200, response.text
    assert response.json()["opening_hours"] == hours
