"""Errors every API maps the same way at its edge, whatever service raised them (no business meaning here)."""

from __future__ import annotations


class DependencyUnavailable(Exception):  # noqa: N818 - reads as a condition, like the HTTP status it maps to
    """A server the request needs (database, broker, cache) did not answer: the API answers 503 with Retry-After.

    Retryable by the client. ``error`` is the code in the JSON body; a service may subclass to give its own.
    """

    error = "dependency_unavailable"

    def __init__(self, dependency: str, message: str | None = None, *, retry_after_s: int = 1) -> None:
        super().__init__(message or f"{dependency} is unavailable; retry later")
        self.dependency, self.retry_after_s = dependency, retry_after_s
