"""A rank's run token (``events.tokens``): drawn here, its hash on the log, the token itself in
a file that only the rank reads, named in the rank's environment as MosaicML's platform names
it, so that mcli and Composer inside the run speak to the API as the run.

Invariants:
- the token's hash is on the log (``attempt.token_issued``) before the rank's command starts,
  so the token works from the command's first instant: ``issue`` appends it at once, ``draw``
  leaves it to the rank's setup, whose first append carries it (the process executor: one
  append fewer before RUNNING; the file is written meanwhile, while the rank's home is still
  root's and nothing of the rank runs);
- the token is never logged, never put in an event, in an environment variable or in the
  shim's spec: only the file's path is;
- the node's own mcli settings (``MOSAICML_*``, ``MCLI_*``: an operator's API key, say) never
  reach a rank (``services.node_agent.environment``); the token is the rank's one credential.
"""

from __future__ import annotations

from pathlib import PurePath

from events.model import RunTokenIssued
from events.tokens import ENDPOINT, PLATFORM, TOKEN_FILE, new_token
from services.core.draw import draw_credential
from services.node_agent.job import RankKey
from services.node_agent.reporter import Reporter


def draw(reporter: Reporter, key: RankKey) -> tuple[RunTokenIssued, str]:
    """A new token for rank ``key``: the event that puts its hash on the log, and the token."""
    token = new_token(key.run_id, *draw_credential())
    event = RunTokenIssued(
        **reporter.fields(key), token_id=token.token_id, token_hash=token.token_hash
    )
    return event, token.presented


async def issue(reporter: Reporter, key: RankKey) -> str:
    """A new token for rank ``key``, once its hash is on the log."""
    event, presented = draw(reporter, key)
    await reporter.report(key, lambda _attempt, _rank: [event])
    return presented


def platform_environment(api_url: str, token_file: PurePath | str) -> dict[str, str]:
    """The variables that tell mcli and Composer they run on the platform, and how to reach
    it as the run."""
    return {PLATFORM: "true", TOKEN_FILE: str(token_file), ENDPOINT: api_url}
