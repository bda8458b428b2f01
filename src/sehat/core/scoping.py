"""The one place a query is narrowed to the caller's organization. Domains never filter by tenant by hand."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from sqlalchemy import Select, false, select
from sqlalchemy.orm import Mapped

from sehat.core.actor import Actor

ModelT = TypeVar("ModelT")


class TenantOwned:
    """Marker for models whose rows belong to one organization (column ``organization_id``)."""

    organization_id: Mapped[uuid.UUID]


def scoped_select(model: type[ModelT], actor: Actor) -> Select[tuple[ModelT]]:
    """SELECT rows of ``model`` visible to ``actor``: its organization only; nothing without one."""
    statement = select(model)
    organization_column: Any = getattr(model, "organization_id", None)
    if organization_column is None:
        raise TypeError(f"{model.__name__} is not tenant-owned; use a dedicated policy instead")
    if actor.organization_id is None:
        return statement.where(false())
    return statement.where(organization_column == actor.organization_id)
