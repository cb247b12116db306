"""Who may read or act on a run: one pure rule, asked by every command that names a run.

``may(actor, action, owner, all_users=..., admin=...)``: a user reads and acts on their own
runs; another user's run takes ``all_users`` (the CLI's ``--all-users``: "I mean someone
else's run"), which only an admin may use. The action does not change the answer today; it is
passed so that a refusal can say what was refused, and so that a rule per action has one place
to go.

The caller says who asks and whether they are an admin: the CLI and the SDK today (identity is
``RUNPLANE_USER``, and every user of a local stack is an admin), the API server of issue 13
from the API key's owner and role.
"""

from __future__ import annotations

from enum import StrEnum

from events.errors import EventsError


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
