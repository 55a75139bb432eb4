"""The directory: roles and the permissions they grant."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Permission(StrEnum):
    CASES_READ = "cases:read"
    CASES_WRITE = "cases:write"
    USERS_READ = "users:read"
    USERS_WRITE = "users:write"
    REFERENCE_READ = "reference:read"
    REFERENCE_WRITE = "reference:write"
    TOKENS_WRITE = "tokens:write"
    WEBHOOKS_READ = "webhooks:read"
    WEBHOOKS_WRITE = "webhooks:write"
    NOTIFICATIONS_READ = "notifications:read"
    LIMITS_WRITE = "limits:write"
    JOBS_MANAGE = "jobs:manage"


ALL_PERMISSIONS = frozenset(Permission)

# The roles a fresh installation starts with; admins may add more through the API.
BUILTIN_ROLES: Mapping[str, frozenset[Permission]] = {
    "admin": ALL_PERMISSIONS,
    "agent": frozenset(
        {
            Permission.CASES_READ,
            Permission.CASES_WRITE,
            Permission.USERS_READ,
            Permission.REFERENCE_READ,
            Permission.NOTIFICATIONS_READ,
        }
    ),
    "viewer": frozenset(
        {
            Permission.CASES_READ,
            Permission.USERS_READ,
            Permission.REFERENCE_READ,
            Permission.NOTIFICATIONS_READ,
        }
    ),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user or a service client, with the permissions of its role."""

    token_id: int
    user_id: int | None
    service_client_id: int | None
    internal: bool
    permissions: frozenset[str]
    # "token:<id>": what the token's requests are counted under. Built once per cached
    # principal: a string built per request must be hashed again for every look-up.
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"token:{self.token_id}")

    def can(self, permission: Permission) -> bool:
        return permission.value in self.permissions

    def is_itself(self, user_id: int | None, service_client_id: int | None) -> bool:
        """Whether the token owner (user or service client) named is this principal.

        Both ids are compared: a service client has no user id, so comparing user ids
        alone made every service client "itself" to every other one.
        """
        if self.user_id is not None:
            return user_id == self.user_id and service_client_id is None
        return (
            self.service_client_id is not None
            and service_client_id == self.service_client_id
            and user_id is None
        )

    def may_manage_tokens_of(self, user_id: int | None, service_client_id: int | None) -> bool:
        """A principal creates and revokes tokens for itself; for others with tokens:write."""
        return self.is_itself(user_id, service_client_id) or self.can(Permission.TOKENS_WRITE)
