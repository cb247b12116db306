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

A user's secrets (``may_manage_secrets``) are theirs to create, list and delete. An admin may
list another user's (names and types: no value is ever shown to anyone) and delete them (a
leaked credential, a departed user), naming the user as mcli's admin mode does (``entity``), but
never create one in another's name: a secret is a credential its owner gives, and their runs
use it. A run's token manages no secrets at all, not even its owner's.

Visibility comes first: another user's run is not there for a user (``visible``), so a refusal
to a user is "not found" (``RunNotFound``, 404) and never names the owner; an admin sees every
run and is refused (``AccessDenied``, 403) only for acting on another's without ``all_users``.

A run's own token (``events.tokens``) makes a principal with ``via``: the run's owner, acting
through one attempt of one run. It sees that run alone, and may only read it, its logs and its
events, update its metadata and submit runs as its children (``RUN_TOKEN_ACTIONS``); every other
run is not there for it, and it is never an admin, whatever its owner is.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from events.errors import EventsError
from events.model import Role, Via


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
    UPDATE_METADATA = "update the metadata of"
    SUBMIT_CHILD = "submit a child run of"
    DELETE = "delete"


#: What a run's own token may do, to its own run only.
RUN_TOKEN_ACTIONS = frozenset(
    {Action.DESCRIBE, Action.LOGS, Action.EVENTS, Action.UPDATE_METADATA, Action.SUBMIT_CHILD}
)


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who asks: the owner of the API key that came with the request, and their role; or, for
    a run's token, the run's owner acting ``via`` that run's attempt (never an admin)."""

    name: str
    role: Role
    via: Via | None = None

    @property
    def admin(self) -> bool:
        return self.role == "admin" and self.via is None

    def __str__(self) -> str:
        return self.name if self.via is None else f"{self.name} ({self.via})"


class RunNotFound(EventsError):
    """``run`` is not there for the one who asked (none such, or another user's: the same answer,
    so names do not leak). Carries the name as asked, and nothing of its owner."""

    def __init__(self, run: str) -> None:
        super().__init__(f"Run {run} not found")
        self.run = run


class AccessDenied(EventsError):
    """``actor`` may not ``action`` run ``run`` of ``owner``. ``admin`` says whether the actor
    could have asked for it as an admin (with ``all_users``)."""

    def __init__(
        self, actor: str, action: Action, run: str, owner: str, *, admin: bool, token: bool = False
    ) -> None:
        super().__init__(f"{actor} may not {action} run {run} of {owner}")
        self.actor = actor
        self.action = action
        self.run = run
        self.owner = owner
        self.admin = admin
        #: The actor is a run's own token, which may do only ``RUN_TOKEN_ACTIONS``.
        self.token = token


def may(actor: str, action: Action, owner: str, *, all_users: bool, admin: bool) -> bool:
    """True if ``actor`` may ``action`` a run submitted by ``owner``."""
    return actor == owner or (all_users and admin)


def check(
    actor: str, action: Action, run: str, owner: str, *, all_users: bool, admin: bool
) -> None:
    """``AccessDenied`` unless ``may(...)``."""
    if not may(actor, action, owner, all_users=all_users, admin=admin):
        raise AccessDenied(actor, action, run, owner, admin=admin)


def visible(principal: Principal, owner: str, run_id: str) -> bool:
    """True if run ``run_id``, submitted by ``owner``, exists for ``principal`` (listings,
    reads, and which refusal they get): their own runs, and every run for an admin; for a run's
    token, its own run alone."""
    if principal.via is not None:
        return run_id == principal.via.run_id
    return principal.name == owner or principal.admin


def sees_runs_of(principal: Principal, user: str) -> bool:
    """True if ``principal`` may list ``user``'s runs (which of them it sees is ``visible``)."""
    return principal.name == user or principal.admin


def may_open_session(principal: Principal) -> bool:
    """True if ``principal`` may sign in to the web console: a user's key may, for a session of
    that user; a run's token may not (it acts for its run alone)."""
    return principal.via is None


def allowed(
    principal: Principal, action: Action, owner: str, run_id: str, *, all_users: bool
) -> bool:
    """``may`` for a principal; a run's token may do ``RUN_TOKEN_ACTIONS`` to its own run."""
    if principal.via is not None:
        return run_id == principal.via.run_id and action in RUN_TOKEN_ACTIONS
    return may(principal.name, action, owner, all_users=all_users, admin=principal.admin)


def authorize(
    principal: Principal, action: Action, run: str, owner: str, run_id: str, *, all_users: bool
) -> None:
    """``RunNotFound`` unless run ``run`` (id ``run_id``) is ``visible`` to ``principal``,
    then ``AccessDenied`` unless ``allowed``."""
    if not visible(principal, owner, run_id):
        raise RunNotFound(run)
    if not allowed(principal, action, owner, run_id, all_users=all_users):
        raise AccessDenied(
            str(principal),
            action,
            run,
            owner,
            admin=principal.admin,
            token=principal.via is not None,
        )


class AdminOnly(EventsError):
    """Only an admin may do ``what`` (manage users and keys, read everyone's bill...)."""

    def __init__(self, actor: str, what: str) -> None:
        super().__init__(f"only an admin may {what}; {actor} is not one")
        self.actor = actor
        self.what = what


def administer(principal: Principal, what: str) -> None:
    """``AdminOnly`` unless ``principal`` is an admin."""
    if not principal.admin:
        raise AdminOnly(str(principal), what)


class SecretAction(StrEnum):
    """What is asked of a user's secrets; the value reads as a verb ("may not <action> ...")."""

    CREATE = "create secrets of"
    LIST = "list the secrets of"
    DELETE = "delete secrets of"


class SecretsForbidden(EventsError):
    """``actor`` may not ``action`` ``owner``; ``token``: the actor is a run's token."""

    def __init__(self, actor: str, action: SecretAction, owner: str, *, token: bool) -> None:
        super().__init__(f"{actor} may not {action} {owner}")
        self.actor = actor
        self.action = action
        self.owner = owner
        self.token = token


def may_manage_secrets(principal: Principal, action: SecretAction, owner: str) -> bool:
    """True if ``principal`` may ``action`` the secrets of user ``owner`` (see the module)."""
    if principal.via is not None:
        return False
    if principal.name == owner:
        return True
    return principal.admin and action is not SecretAction.CREATE


def authorize_secrets(principal: Principal, action: SecretAction, owner: str) -> None:
    """``SecretsForbidden`` unless ``may_manage_secrets``."""
    if not may_manage_secrets(principal, action, owner):
        raise SecretsForbidden(str(principal), action, owner, token=principal.via is not None)
