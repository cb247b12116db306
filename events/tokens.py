"""Run tokens: a run's own code speaks to the API as its run, for as long as its attempt lives.

When a rank of an attempt is launched, its node-agent draws a token, appends
``attempt.token_issued`` (the token's id and the SHA-256 of its secret, never the secret), then
writes the token to a file only the rank reads and names that file in the rank's environment
(``MOSAICML_ACCESS_TOKEN_FILE``), as MosaicML's platform does. The rank's mcli client sends it as
``Authorization: Bearer <token>``.

A token reads ``rpt.<run id>.<token id>.<secret>``: the run id says where its hash is (the run's
own history, so no index of tokens is kept anywhere), the token id which one, and the secret is
``secrets.token_urlsafe(32)`` (256 bits, no ``.`` in it). As for API keys
(``events.identity``), a fast hash is right for a high-entropy token, and hashes are compared in
constant time.

A token works while its attempt is the run's latest and has not ended (TERMINATING included: a
rank's last flush comes as it winds down); from the attempt's end, and once the run is deleted,
it is refused (401) like an expired key. Whoever presents it acts as the run's owner through
that attempt (``events.access.Principal.via``), with what ``events.access.RUN_TOKEN_ACTIONS``
allows.

Pure: no IO, no clock, no randomness. The edge draws the id and the secret and reads the run's
state.
"""

from __future__ import annotations

import hmac
import re
from typing import NamedTuple

from events.access import Principal
from events.identity import Unauthenticated, Why, hash_secret
from events.lifecycle import RunState
from events.model import Via

#: The variables of a rank's environment that mcli and Composer read (MosaicML's names): the
#: node-agent sets them, runplane's own client reads them as mcli does.
PLATFORM = "MOSAICML_PLATFORM"
TOKEN_FILE = "MOSAICML_ACCESS_TOKEN_FILE"  # noqa: S105 - a variable's name
ENDPOINT = "MOSAICML_API_ENDPOINT"
TOKEN_PREFIX = "rpt."  # noqa: S105 - the prefix that tells a token from a key, no secret
_RUN_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TOKEN_ID = re.compile(r"[a-z0-9]{8,32}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{32,128}")
_MAX_CHARS = len(TOKEN_PREFIX) + 128 + 1 + 32 + 1 + 128


class NewToken(NamedTuple):
    """A token as the rank's file holds it (``presented``), and what the log keeps of it."""

    presented: str
    token_id: str
    token_hash: str


class PresentedToken(NamedTuple):
    run_id: str
    token_id: str
    secret: str


def new_token(run_id: str, token_id: str, secret: str) -> NewToken:
    """The token of run ``run_id`` made of ``token_id`` and ``secret`` (drawn at the edge)."""
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"a run id for a token is 1 to 128 of [A-Za-z0-9._:-], not {run_id!r}")
    if not _TOKEN_ID.fullmatch(token_id):
        raise ValueError("a token id is 8 to 32 lowercase letters or digits")
    if not _SECRET.fullmatch(secret) or "." in secret:
        raise ValueError("a secret is 32 to 128 URL-safe characters (secrets.token_urlsafe(32))")
    return NewToken(f"{TOKEN_PREFIX}{run_id}.{token_id}.{secret}", token_id, hash_secret(secret))


def is_token(presented: str) -> bool:
    """True if ``presented`` is meant as a run token (not an API key)."""
    return presented.startswith(TOKEN_PREFIX)


def parse_token(presented: str) -> PresentedToken | None:
    """The parts of a token of the right shape, else None."""
    if len(presented) > _MAX_CHARS or not is_token(presented):
        return None
    parts = presented.removeprefix(TOKEN_PREFIX).rsplit(".", 2)
    if len(parts) != 3:
        return None
    run_id, token_id, secret = parts
    if not (
        _RUN_ID.fullmatch(run_id) and _TOKEN_ID.fullmatch(token_id) and _SECRET.fullmatch(secret)
    ):
        return None
    return PresentedToken(run_id, token_id, secret)


def run_principal(state: RunState | None, token: PresentedToken) -> Principal:
    """Who ``token`` is, given the state of the run it names: the run's owner acting through
    the attempt it was issued to. ``Unauthenticated`` for an unknown run or token, a wrong
    secret (``UNKNOWN``), and a token whose attempt ended or whose run is deleted
    (``EXPIRED``). The secret is checked first, so that knowing a token id (it is in the log)
    tells nothing."""
    issued = None
    if state is not None:
        issued = next((a for a in state.attempts if token.token_id in a.tokens), None)
    if (
        state is None
        or issued is None
        or not hmac.compare_digest(hash_secret(token.secret), issued.tokens[token.token_id])
    ):
        raise Unauthenticated(Why.UNKNOWN, token.token_id)
    if state.deleted or issued is not state.latest or issued.status.is_terminal():
        raise Unauthenticated(Why.EXPIRED, token.token_id)
    return Principal(
        name=state.created_by,
        role="user",
        via=Via(run_id=state.run_id, run=state.name, attempt=issued.index),
    )
