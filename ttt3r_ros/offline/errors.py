"""Errors the offline tools report to the user as a one-line message (no traceback)."""
from __future__ import annotations


class OfflineInputError(ValueError):
    """The input (bag, folder, video, trajectory file, option) cannot be used; the message says why and what to do."""

