"""The distributed trainer."""
