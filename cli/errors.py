"""The CLI's and the SDK's errors: each says what went wrong and what to do, with the code mcli
shows (``✗ Error 404: Run x not found``): the API server's own code where it answered."""

from __future__ import annotations


class ClientError(Exception):
    """Something the user asked cannot be done; ``str()`` says what and what to do."""

    code = 400


class NotFound(ClientError):
    code = 404


class Refused(ClientError):
    """The request does not fit the run's state (stop a finished run, restart a running one)."""

    code = 409


class Forbidden(ClientError):
    """Not the caller's to do (another user's run without --all-users, an admin's command)."""

    code = 403


class Unreachable(ClientError):
    """runplane cannot be reached (no local stack, a server that does not answer)."""

    code = 503


class UsageError(ClientError):
    """Arguments that contradict each other (``--rank`` with ``--failed``)."""

    code = 400


class StackError(RuntimeError):
    """The local stack could not be started, found or stopped; the message says what to do."""
