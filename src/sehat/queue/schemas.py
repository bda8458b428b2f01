"""OPD queue inputs and outputs. A token is shown to staff with its patient id; what a lobby board or a patient's
own view shows is built in ``queue.live`` and ``queue.boards`` and carries no patient identifier at all."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AwareDatetime, Field, StringConstraints, model_validator

from sehat.core.schemas import InputModel, Name, OutputModel

Prefix = Annotated[str, StringConstraints(strip_whitespace=True, to_upper=True, pattern=r"^[A-Za-z]{1,4}$")]
SessionName = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
RoomName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50)]


class Priority(StrEnum):
    """The order classes are called in (``queue.eta.PriorityClass``)."""

    emergency = "emergency"
    # Elderly, pregnant or disabled patients.
    priority = "priority"
    booked = "booked"
    walk_in = "walk_in"


class QueueCreate(InputModel):
    facility_id: uuid.UUID
    department_id: uuid.UUID | None = None
    practitioner_id: uuid.UUID | None = None
    day: date = Field(description="The facility's local date")
    session: SessionName = "day"
    name: Name
    prefix: Prefix = Field(description="Token labels start with it: GM-014")
    rooms: list[RoomName] = Field(min_length=1, max_length=20, description="Rooms or counters serving the queue")
    default_minutes: int = Field(default=10, ge=1, le=240, description="A walk-in's planned consultation length")

    @model_validator(mode="after")
    def _distinct_rooms(self) -> QueueCreate:
        if len({room.casefold() for room in self.rooms}) != len(self.rooms):
            raise ValueError("room names must differ")
        return self


class RoomRead(OutputModel):
    id: uuid.UUID
    name: str


class QueueRead(OutputModel):
    id: uuid.UUID
    facility_id: uuid.UUID
    department_id: uuid.UUID | None
    practitioner_id: uuid.UUID | None
    day: date
    session: str
    name: str
    prefix: str
    default_minutes: int
    last_number: int
    paused: bool
    paused_until: datetime | None
    delayed_until: datetime | None
    rooms: list[RoomRead] = Field(default_factory=list)


class QueueListQuery(InputModel):
    facility_id: uuid.UUID
    day: date | None = None


class TokenCreate(InputModel):
    """A walk-in (``patient_id``) or a checked-in appointment (``appointment_id``): exactly one of them."""

    patient_id: uuid.UUID | None = None
    appointment_id: uuid.UUID | None = None
    priority: Priority | None = Field(
        default=None, description="Emergency or priority moves the patient ahead; default booked or walk-in"
    )

    @model_validator(mode="after")
    def _one_origin(self) -> TokenCreate:
        if (self.patient_id is None) == (self.appointment_id is None):
            raise ValueError("give either patient_id (a walk-in) or appointment_id (a checked-in appointment)")
        if self.priority is Priority.booked and self.appointment_id is None:
            raise ValueError("only an appointment's token is booked")
        if self.priority is Priority.walk_in and self.appointment_id is not None:
            raise ValueError("an appointment's token is not a walk-in")
        return self


class TokenRead(OutputModel):
    id: uuid.UUID
    queue_id: uuid.UUID
    number: int
    label: str
    patient_id: uuid.UUID
    appointment_id: uuid.UUID | None
    source: str
    priority: str
    status: str
    arrived_at: datetime
    appointment_at: datetime | None
    room_id: uuid.UUID | None
    called_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    version: int
    # For a waiting token: its place in the line (1 is next) and when it is expected to be called.
    position: int | None = None
    estimated_call_at: datetime | None = None


class OwnTokenRead(OutputModel):
    """A patient's own token: nothing about anybody else in the line."""

    id: uuid.UUID
    queue_id: uuid.UUID
    queue_name: str
    label: str
    status: str
    room: str | None
    position: int | None
    estimated_call_at: datetime | None


class CallNext(InputModel):
    room_id: uuid.UUID


class Transfer(InputModel):
    queue_id: uuid.UUID
    priority: Priority | None = Field(default=None, description="Keeps the token's own class when not given")


class Pause(InputModel):
    until: AwareDatetime | None = Field(default=None, description="When the queue expects to resume, if known")


class Delay(InputModel):
    minutes: int = Field(ge=0, le=480, description="How late the practitioner runs from now; 0 withdraws a delay")


class QueueMetrics(OutputModel):
    queue_id: uuid.UUID
    waiting: int
    longest_wait_seconds: float
    completed: int
    average_consultation_seconds: float | None
    practitioner_id: uuid.UUID | None


class BoardCreate(InputModel):
    facility_id: uuid.UUID
    department_id: uuid.UUID | None = None
    name: Name


class BoardRead(OutputModel):
    id: uuid.UUID
    facility_id: uuid.UUID
    department_id: uuid.UUID | None
    name: str
    created_at: datetime


class BoardEnrolled(BoardRead):
    display_key: str = Field(description="Shown once: the screen's key to this board and nothing else")
    page_url: str
