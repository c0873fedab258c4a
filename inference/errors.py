"""Typed errors of the inference service."""

from __future__ import annotations

from schemas.errors import DrivestreamError


class InferenceError(DrivestreamError):
    """Base class of errors the serving loop raises on purpose."""


class ModelRejected(InferenceError):
    """A published model failed a check; ``reason`` is a short label for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"model rejected ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


class DeliveryError(InferenceError):
    """The producer could not deliver predictions or dead letters: nothing after the last
    commit is committed, the service stops, and a restart re-answers from that commit."""
