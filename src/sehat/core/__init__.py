"""Cross-cutting mechanisms with no domain logic."""
