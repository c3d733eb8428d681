"""Errors raised on bad input. Every one names the field that was wrong."""

from __future__ import annotations


class SpecError(ValueError):
    """Data does not match its spec.

    Attributes:
        field: the path of the offending field, e.g. ``images['cam_high']`` or
            ``normalization.state.std[3]``.
    """

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class ObservationError(SpecError):
    """An observation does not match the policy bundle's spec."""


class BundleError(SpecError):
    """A bundle (policy or verifier) fails validation, or does not belong with another."""
