"""Shared Pydantic building blocks: strict inputs, reusable constrained fields."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, StringConstraints

Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, to_lower=True, max_length=320, pattern=r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$"
    ),
]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Code = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")]
# Lower-cased before the pattern is checked: pydantic applies `pattern` before `to_lower`.
Slug = Annotated[
    str,
    BeforeValidator(lambda value: value.strip().lower() if isinstance(value, str) else value),
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$"),
]
Password = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class InputModel(BaseModel):
    """Every request body: unknown fields are an error, never silently dropped or assigned."""

    model_config = ConfigDict(extra="forbid", str_max_length=10_000)


class OutputModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)
