"""Alembic migrations; run with `sehat migrate` (or automatically by `sehat serve` on SQLite)."""
