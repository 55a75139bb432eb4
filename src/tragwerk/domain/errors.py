"""The domain's error root. No HTTP here: `tragwerk.api.errors` maps these to problems."""

from __future__ import annotations


class DomainError(Exception):
    """Root of every error the domain and the store raise on purpose."""

    code = "domain-error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(DomainError):
    code = "not-found"


class InvalidTransition(DomainError):
    code = "invalid-transition"


class StaleVersion(DomainError):
    """The caller's version of a record is older than the stored one (lost update refused)."""

    code = "stale-version"

    def __init__(self, detail: str, current_version: int) -> None:
        super().__init__(detail)
        self.current_version = current_version


class Conflict(DomainError):
    """A uniqueness or state rule forbids the change (e.g. duplicate email)."""

    code = "conflict"


class InvalidReference(DomainError):
    """A referenced record (role, location, user) does not exist."""

    code = "invalid-reference"


class InvalidCursor(DomainError):
    code = "invalid-cursor"


class Unauthenticated(DomainError):
    code = "unauthenticated"


class Forbidden(DomainError):
    code = "forbidden"


class InvalidInput(DomainError):
    """A value is well-formed but outside what the operation accepts."""

    code = "invalid-input"
