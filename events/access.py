"""Who may see, read or act on a run: one pure rule, asked by every command that names a run.

``may(actor, action, owner, all_users=..., admin=...)``: a user reads and acts on their own
runs; another user's run takes ``all_users`` (the CLI's ``--all-users``: "I mean someone
else's run"), which only an admin may use. The action does not change the answer today; it is
passed so that a refusal can say what was refused, and so that a rule per action has one place
to go.

The caller says who asks and whether they are an admin: the CLI and the SDK today (identity is
``RUNPLANE_USER``, and every user of a local stack is an admin), the API server of issue 13
from the API key's owner and role, as a ``Principal`` (``events.identity.authenticate``).

What is not about a run (users and keys) is an admin's alone (``administer``).

Visibility comes first: another user's run is not there for a user (``visible``), so a refusal
to a user is "not found" (``RunNotFound``, 404) and never names the owner; an admin sees every
run and is refused (``AccessDenied``, 403) only for acting on another's without ``all_users``.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from events.errors import EventsError
from events.model import Role


class Action(StrEnum):
    """What is asked of a run; the value reads as a verb ("may not <action> it")."""

    DESCRIBE = "describe"
    LOGS = "read the logs of"
    EVENTS = "read the events of"
    AUDIT = "read the audit trail of"
    CLONE = "clone"
    STOP = "stop"
    RESTART = "restart"
    UPDATE = "update"
    DELETE = "delete"


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who asks: the owner of the API key that came with the request, and their role."""

    name: str
    role: Role

    @property
    def admin(self) -> bool:
        return self.role == "admin"


class RunNotFound(EventsError):
    """``run`` is not there for the one who asked (none such, or another user's: the same answer,
    so names do not leak). Carries the name as asked, and nothing of its owner."""

    def __init__(self, run: str) -> None:
        super().__init__(f"Run {run} not found")
        self.run = run


class AccessDenied(EventsError):
    """``actor`` may not ``action`` run ``run`` of ``owner``. ``admin`` says whether the actor
    could have asked for it as an admin (with ``all_users``)."""

    def __init__(self, actor: str, action: Action, run: str, owner: str, *, admin: bool) -> None:
        super().__init__(f"{actor} may not {action} run {run} of {owner}")
        self.actor = actor
        self.action = action
        self.run = run
        self.owner = owner
        self.admin = admin


def may(actor: str, action: Action, owner: str, *, all_users: bool, admin: bool) -> bool:
    """True if ``actor`` may ``action`` a run submitted by ``owner``."""
    return actor == owner or (all_users and admin)


def check(
    actor: str, action: Action, run: str, owner: str, *, all_users: bool, admin: bool
) -> None:
    """``AccessDenied`` unless ``may(...)``."""
    if not may(actor, action, owner, all_users=all_users, admin=admin):
        raise AccessDenied(actor, action, run, owner, admin=admin)


def visible(principal: Principal, owner: str) -> bool:
    """True if a run submitted by ``owner`` exists for ``principal`` (listings, reads, and which
    refusal they get): their own runs, and every run for an admin."""
    return principal.name == owner or principal.admin


def allowed(principal: Principal, action: Action, owner: str, *, all_users: bool) -> bool:
    """``may`` for a principal."""
    return may(principal.name, action, owner, all_users=all_users, admin=principal.admin)


def authorize(
    principal: Principal, action: Action, run: str, owner: str, *, all_users: bool
) -> None:
    """``RunNotFound`` unless the run is ``visible`` to ``principal``, then ``AccessDenied``
    unless ``allowed``."""
    if not visible(principal, owner):
        raise RunNotFound(run)
    if not allowed(principal, action, owner, all_users=all_users):
        raise AccessDenied(principal.name, action, run, owner, admin=principal.admin)


class AdminOnly(EventsError):
    """Only an admin may do ``what`` (manage users and keys, read everyone's bill...)."""

    def __init__(self, actor: str, what: str) -> None:
        super().__init__(f"only an admin may {what}; {actor} is not one")
        self.actor = actor
        self.what = what


def administer(principal: Principal, what: str) -> None:
    """``AdminOnly`` unless ``principal`` is an admin."""
    if not principal.admin:
        raise AdminOnly(principal.name, what)
