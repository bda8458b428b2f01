"""Keyset pagination over (created_at, id): stable under inserts, and the cursor is opaque to callers."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import orjson
from pydantic import BaseModel
from sqlalchemy import Select, and_, or_
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.errors import InvalidInput

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50

ItemT = TypeVar("ItemT")


class Page(BaseModel, Generic[ItemT]):
    items: list[ItemT]
    next_cursor: str | None = None


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = orjson.dumps([created_at.isoformat(), str(row_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_text, id_text = orjson.loads(raw)
        created_at = datetime.fromisoformat(created_text)
        if created_at.tzinfo is None:
            raise ValueError("cursor time lacks an offset")
        # Normalising here turns an offset that overflows the calendar into a refusal, not a 500 later.
        return created_at.astimezone(UTC), uuid.UUID(id_text)
    except (ValueError, TypeError, OverflowError, orjson.JSONDecodeError) as exc:
        raise InvalidInput("The cursor is not one this server issued.", code="invalid_cursor") from exc


async def paginate(
    session: AsyncSession, statement: Select[Any], model: Any, *, limit: int, cursor: str | None
) -> tuple[list[Any], str | None]:
    if cursor:
        after_time, after_id = decode_cursor(cursor)
        statement = statement.where(
            or_(model.created_at > after_time, and_(model.created_at == after_time, model.id > after_id))
        )
    rows = list((await session.scalars(statement.order_by(model.created_at, model.id).limit(limit + 1))).all())
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(last.created_at, last.id)
