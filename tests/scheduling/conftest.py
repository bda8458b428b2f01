"""A bookable clinic for the scheduling tests, set up through the API: a doctor with a practice profile and
weekly hours at the first facility (Asia/Karachi), appointment types, and registered patients."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import Api
from tests.patients.conftest import Desk, open_desk

KARACHI = ZoneInfo("Asia/Karachi")


@dataclass
class Clinic:
    desk: Desk
    practitioner_ids: list[str]
    type_ids: dict[str, str]
    patient_ids: list[str]
    department_id: str | None = None

    @property
    def api(self) -> Api:
        return self.desk.api

    @property
    def facility_id(self) -> str:
        return str(self.desk.tenant.facility_ids[0])

    def booking(self, *, start: datetime, patient: int = 0, practitioner: int = 0, kind: str = "new") -> dict[str, Any]:
        return {
            "patient_id": self.patient_ids[patient],
            "practitioner_id": self.practitioner_ids[practitioner],
            "facility_id": self.facility_id,
            "appointment_type_id": self.type_ids[kind],
            "start": start.isoformat(),
        }

    async def book(self, body: dict[str, Any], **headers: str) -> Any:
        return await self.api.client.post(
            "/api/v1/appointments", headers={**self.desk.front_office, **headers}, json=body
        )

    async def booked(self, *, start: datetime, patient: int = 0, practitioner: int = 0, kind: str = "new") -> Any:
        """Book, expecting success: the appointment as the API returned it."""
        response = await self.book(self.booking(start=start, patient=patient, practitioner=practitioner, kind=kind))
        assert response.status_code == 201, response.text
        return response.json()

    async def post(self, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> Any:
        return await self.api.client.post(f"/api/v1{path}", headers=headers or self.desk.front_office, json=body)

    async def get(self, path: str, headers: dict[str, str] | None = None, **params: Any) -> Any:
        return await self.api.client.get(f"/api/v1{path}", headers=headers or self.desk.front_office, params=params)

    async def appointment(self, appointment_id: str) -> Any:
        response = await self.get(f"/appointments/{appointment_id}")
        assert response.status_code == 200, response.text
        return response.json()

    async def patient_headers(self, patient: int) -> dict[str, str]:
        """A patient account linked to patient ``patient``, signed in."""
        email = f"patient{patient}@clinic-patients.test"
        await self.api.add_patient_account(
            self.desk.tenant.organization_id, email, patient_id=uuid.UUID(self.patient_ids[patient])
        )
        response = await self.api.sign_in(email)
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}


def tomorrow_at(hour: int, minute: int = 0) -> datetime:
    """A local time at the Karachi facility, tomorrow (always in the future, always within the hours below)."""
    day = datetime.now(KARACHI).date() + timedelta(days=1)
    return datetime.combine(day, time(hour, minute), tzinfo=KARACHI)


async def open_clinic(
    api: Api, *, patients: int = 3, practitioners: int = 1, specialties: tuple[str, ...] = ()
) -> Clinic:
    """``specialties`` names each practitioner's specialty in turn (general medicine when not named); every
    practitioner belongs to the clinic's one department."""
    desk = await open_desk(api, "clinic", roles=("front_office", "doctor", "nurse"))
    admin = desk.admin
    department = await api.client.post(
        "/api/v1/departments",
        headers=admin,
        json={"facility_id": str(desk.tenant.facility_ids[0]), "name": "General OPD", "code": "GOPD"},
    )
    assert department.status_code == 201, department.text
    department_id = department.json()["id"]
    practitioner_ids = []
    for number in range(practitioners):
        if number == 0:
            email = desk.tenant.emails["doctor"]
        else:
            email = f"doctor{number}@clinic.test"
            created = await api.client.post(
                "/api/v1/users",
                headers=admin,
                json={
                    "email": email,
                    "full_name": f"Doctor {number}",
                    "roles": ["doctor"],
                    "facility_ids": [str(desk.tenant.facility_ids[0])],
                    "password": "correct horse battery staple",
                },
            )
            assert created.status_code == 201, created.text
        user_id = await _user_id(api, email)
        response = await api.client.post(
            "/api/v1/practitioners",
            headers=admin,
            json={
                "user_id": str(user_id),
                "display_name": f"Dr. Clinic {number}",
                "specialty": specialties[number] if number < len(specialties) else "general_medicine",
                "languages": ["ur", "en"],
                "facility_ids": [str(desk.tenant.facility_ids[0])],
                "department_ids": [department_id],
            },
        )
        assert response.status_code == 201, response.text
        practitioner_id = response.json()["id"]
        for weekday in range(7):
            hours = await api.client.post(
                f"/api/v1/practitioners/{practitioner_id}/availability",
                headers=admin,
                json={
                    "facility_id": str(desk.tenant.facility_ids[0]),
                    "weekday": weekday,
                    "starts": "08:00",
                    "ends": "20:00",
                    "slot_minutes": 10,
                },
            )
            assert hours.status_code == 201, hours.text
        practitioner_ids.append(practitioner_id)
    type_ids = {}
    for code, minutes in (("new", 20), ("follow", 10), ("procedure", 40)):
        created = await api.client.post(
            "/api/v1/appointment-types",
            headers=admin,
            json={"name": code.title(), "code": code, "duration_minutes": minutes},
        )
        assert created.status_code == 201, created.text
        type_ids[code] = created.json()["id"]
    patient_ids = []
    for number in range(patients):
        patient = await desk.register(
            given_name=f"Patient{number}", phone=f"+9198{number:08d}", email=None, national_id=None
        )
        patient_ids.append(patient["id"])
    return Clinic(desk, practitioner_ids, type_ids, patient_ids, department_id)


async def _user_id(api: Api, email: str) -> uuid.UUID:
    from sqlalchemy import select

    from sehat.identity.models import User

    async with api.unit_of_work() as session:
        found = await session.scalar(select(User.id).where(User.email == email))
    assert found is not None
    return found


@pytest.fixture
async def clinic(api: Api) -> Clinic:
    return await open_clinic(api)
