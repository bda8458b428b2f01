"""Patients for the registry's tests, registered the way front office does: through the API."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import Api, Tenant, build_tenant

# Valid numbers in the default region (India), written as a front desk would type them.
PHONE = "098123 45678"
PHONE_E164 = "+919812345678"


def patient_body(tenant: Tenant, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "registering_facility_id": str(tenant.facility_ids[0]),
        "given_name": "Ayesha",
        "family_name": "Siddiqui",
        "birth_date": "1987-04-12",
        "sex": "female",
        "gender": "woman",
        "phone": PHONE,
        "email": "Ayesha.Siddiqui@example.org",
        "address": {"line1": "12 Jail Road", "city": "Lahore", "postal_code": "54000", "country": "PK"},
        "national_id": {"kind": "aadhaar", "value": "2345 6789 0123"},
        "emergency_contact": {"name": "Imran Siddiqui", "relationship": "brother", "phone": "+92 300 1234567"},
        "preferred_language": "ur-PK",
    }
    body.update(overrides)
    return body


@dataclass
class Desk:
    """A tenant with its front-office and admin headers, registering patients."""

    api: Api
    tenant: Tenant
    front_office: dict[str, str]
    admin: dict[str, str]

    async def register(self, **overrides: Any) -> dict[str, Any]:
        response = await self.api.client.post(
            "/api/v1/patients", headers=self.front_office, json=patient_body(self.tenant, **overrides)
        )
        assert response.status_code == 201, response.text
        return response.json()

    async def headers(self, role: str) -> dict[str, str]:
        return await self.api.headers_for(self.tenant.emails[role])

    def patient_id(self, patient: dict[str, Any]) -> uuid.UUID:
        return uuid.UUID(patient["id"])


async def open_desk(api: Api, slug: str, roles: tuple[str, ...] = ("front_office", "doctor")) -> Desk:
    tenant = await build_tenant(api, slug, roles=roles)
    return Desk(
        api, tenant, await api.headers_for(tenant.emails["front_office"]), await api.headers_for(tenant.admin_email)
    )


@pytest.fixture
async def desk(api: Api) -> Desk:
    return await open_desk(api, "alpha", roles=("front_office", "doctor", "nurse", "billing", "auditor"))
