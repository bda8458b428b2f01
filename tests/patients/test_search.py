"""Search without decryption: each exact-match key finds exactly the patients it names, through a blind index
that differs between organizations, and never another organization's patients."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from sehat.core.audit import AuditEvent
from sehat.patients.models import PatientSearchEntry
from tests.patients.conftest import Desk, open_desk


async def _search(desk: Desk, headers: dict[str, str] | None = None, **params: Any) -> Any:
    return await desk.api.client.get("/api/v1/patients", headers=headers or desk.front_office, params=params)


async def _found(desk: Desk, **params: Any) -> list[str]:
    response = await _search(desk, **params)
    assert response.status_code == 200, response.text
    return sorted(item["id"] for item in response.json()["items"])


async def test_each_search_key_finds_exactly_the_right_patients(desk: Desk) -> None:
    ayesha = await desk.register()
    # Near misses: one digit, one letter, one day, one id kind away.
    bilal = await desk.register(
        given_name="Bilal",
        family_name="Siddiqui",
        birth_date="1987-04-13",
        phone="+91 98123 45679",
        email="ayesha.siddiqui@example.com",
        national_id={"kind": "abha", "value": "234567890123"},
    )
    # Shares Ayesha's phone (a family phone): both are found by it.
    sana = await desk.register(given_name="Sana", email=None, national_id=None, birth_date="2015-09-01")
    searches = {
        # Typed differently from how it was registered: normalization makes them the same number.
        "phone": ({"phone": "+91-98123-45678"}, [ayesha["id"], sana["id"]]),
        "email": ({"email": "  AYESHA.Siddiqui@EXAMPLE.org"}, [ayesha["id"]]),
        "mrn": ({"mrn": bilal["mrn"]}, [bilal["id"]]),
        "national_id": ({"national_id": "2345-6789-0123", "national_id_kind": "aadhaar"}, [ayesha["id"]]),
        "name": ({"name": "ayesha  SIDDIQUI", "birth_date": "1987-04-12"}, [ayesha["id"]]),
    }
    for key, (params, expected) in searches.items():
        assert await _found(desk, **params) == sorted(expected), key
    assert await _found(desk, phone="+91 98123 45670") == []
    assert await _found(desk, name="Ayesha Siddiqui", birth_date="1987-04-13") == []


async def test_a_hit_shows_the_summary_only_and_audits_each_patient_found(start_api: Any) -> None:
    async with start_api(audit_seal_settle_seconds=0) as api:
        await _hit_shows_the_summary_only_and_audits_each_patient_found(await open_desk(api, "alpha"))


async def _hit_shows_the_summary_only_and_audits_each_patient_found(desk: Desk) -> None:
    patient = await desk.register()
    response = await _search(desk, headers=await desk.headers("doctor"), phone=patient["phone"])
    assert response.status_code == 200
    (hit,) = response.json()["items"]
    assert set(hit) == {
        "id",
        "status",
        "mrn",
        "given_name",
        "family_name",
        "birth_date",
        "registering_facility_id",
        "merged_into_id",
    }
    async with desk.api.unit_of_work() as session:
        entries = (
            await session.execute(
                select(AuditEvent.action, AuditEvent.details).where(
                    AuditEvent.patient_id == uuid.UUID(patient["id"]), AuditEvent.action == "patient.read"
                )
            )
        ).all()
    assert [details["via"] for _, details in entries] == ["search"]
    # Written without mapped objects on PostgreSQL, the entries still carry valid MACs: the sealer takes them.
    done = await desk.api.app.state.audit_chain.seal_pass(desk.api.database)
    assert done.refused == 0 and done.sealed >= 2


async def test_the_same_phone_in_two_organizations_has_different_blind_index_values(api: Any) -> None:
    alpha = await open_desk(api, "alpha")
    beta = await open_desk(api, "beta")
    in_alpha = await alpha.register()
    in_beta = await beta.register()
    async with api.unit_of_work() as session:
        digests = dict(
            (
                await session.execute(
                    select(PatientSearchEntry.patient_id, PatientSearchEntry.digest).where(
                        PatientSearchEntry.kind == "phone"
                    )
                )
            ).all()
        )
    assert digests[uuid.UUID(in_alpha["id"])] != digests[uuid.UUID(in_beta["id"])]
    # And each organization finds only its own patient by that phone.
    assert await _found(alpha, phone=in_alpha["phone"]) == [in_alpha["id"]]
    assert await _found(beta, phone=in_alpha["phone"]) == [in_beta["id"]]


async def test_another_organization_gets_404_for_a_guessed_patient_id(api: Any) -> None:
    alpha = await open_desk(api, "alpha")
    beta = await open_desk(api, "beta")
    patient = await alpha.register()
    for path in (f"/api/v1/patients/{patient['id']}",):
        response = await api.client.get(path, headers=beta.admin)
        assert response.status_code == 404, response.text
        assert "Ayesha" not in response.text


async def test_a_search_needs_exactly_one_well_formed_key(desk: Desk) -> None:
    for params, field in (
        ({"phone": "not a phone"}, "phone"),
        ({"email": "nobody"}, "email"),
        ({"national_id": "12!!", "national_id_kind": "aadhaar"}, "national_id"),
        ({"national_id_kind": "martian", "national_id": "1234"}, "national_id_kind"),
    ):
        response = await _search(desk, **params)
        assert response.status_code == 422, (params, response.text)
        assert [error["field"] for error in response.json()["errors"]] == [f"query.{field}"]
    for params in ({"phone": "+919812345678", "email": "a@b.org"}, {"name": "Ayesha"}, {"national_id": "1234"}):
        response = await _search(desk, **params)
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_search"


async def test_without_a_key_staff_list_only_patients_of_their_facilities(desk: Desk) -> None:
    north = await desk.register()
    south = await desk.register(
        registering_facility_id=str(desk.tenant.facility_ids[1]), phone=None, email=None, national_id=None
    )
    # The doctor works at the first facility only; front office reads the whole organization.
    doctor_sees = await desk.api.all_pages("/api/v1/patients", await desk.headers("doctor"))
    desk_sees = await desk.api.all_pages("/api/v1/patients", desk.front_office)
    assert [item["id"] for item in doctor_sees] == [north["id"]]
    assert sorted(item["id"] for item in desk_sees) == sorted([north["id"], south["id"]])
