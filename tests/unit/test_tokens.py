"""Run tokens (``events.tokens``): their shape, who presents them, and when they stop working,
over runs folded by the lifecycle rules themselves."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events import model as ev
from events.errors import IllegalTransition
from events.identity import Unauthenticated, Why
from events.lifecycle import RunState, fold
from events.tokens import is_token, new_token, parse_token, run_principal
from tests.unit.test_lifecycle import (
    RUN,
    USER,
    attempt_running,
    completed,
    delete,
    deleted,
    node_of,
    placement,
    queued,
    rank_exited,
    rank_running,
    restart,
    scheduled,
    submitted,
    terminating,
)

SECRET = "s3cr3t-" + "x" * 36


def issued(token_id: str, secret: str = SECRET, rank: int = 0, a: int = 0) -> ev.RunTokenIssued:
    token = new_token(RUN, token_id, secret)
    return ev.RunTokenIssued(
        id=f"t-{token_id}", actor="node-agent@x", run_id=RUN, attempt=a, rank=rank,
        node=node_of(rank), token_id=token.token_id, token_hash=token.token_hash,
    )  # fmt: skip


def started(*more: ev.AnyRunEvent) -> RunState:
    state = fold([submitted(), queued(), scheduled(ranks=placement(1)), *more])
    assert state is not None
    return state


def presented(token_id: str, secret: str = SECRET) -> str:
    return new_token(RUN, token_id, secret).presented


def who(state: RunState | None, token: str) -> str:
    parsed = parse_token(token)
    assert parsed is not None
    return str(run_principal(state, parsed))


def refusal(state: RunState | None, token: str) -> Why:
    parsed = parse_token(token)
    assert parsed is not None
    with pytest.raises(Unauthenticated) as refused:
        run_principal(state, parsed)
    return refused.value.why


def test_a_token_acts_as_the_runs_owner_through_its_attempt() -> None:
    state = started(issued("tokenaaa1"), rank_running(0), attempt_running())
    assert who(state, presented("tokenaaa1")) == f"{USER} (run hello-vc5nfs attempt 0)"
    parsed = parse_token(presented("tokenaaa1"))
    assert parsed is not None
    principal = run_principal(state, parsed)
    assert not principal.admin
    assert principal.via == ev.Via(run_id=RUN, run="hello-vc5nfs", attempt=0)


def test_a_wrong_secret_an_unknown_token_or_run_are_all_unknown() -> None:
    state = started(issued("tokenaaa1"))
    assert refusal(state, presented("tokenaaa1", "y" * 43)) is Why.UNKNOWN
    assert refusal(state, presented("tokenbbb2")) is Why.UNKNOWN
    assert refusal(None, presented("tokenaaa1")) is Why.UNKNOWN


def test_a_token_works_while_its_attempt_winds_down_and_not_from_its_end() -> None:
    live: list[ev.AnyRunEvent] = [
        issued("tokenaaa1"),
        rank_running(0),
        attempt_running(),
        rank_exited(0),
    ]
    assert who(started(*live, terminating()), presented("tokenaaa1"))
    assert refusal(started(*live, terminating(), completed()), presented("tokenaaa1")) is (
        Why.EXPIRED
    )


def test_a_new_attempt_does_not_revive_the_old_attempts_token() -> None:
    ended: list[ev.AnyRunEvent] = [
        issued("tokenaaa1"),
        rank_running(0),
        attempt_running(),
        rank_exited(0),
    ]
    reopened: list[ev.AnyRunEvent] = [*ended, terminating(), completed(), restart(1), queued(1)]
    assert refusal(started(*reopened), presented("tokenaaa1")) is Why.EXPIRED
    state = started(*reopened, scheduled(1, placement(1)), issued("tokenccc3", a=1))
    assert who(state, presented("tokenccc3")).endswith("attempt 1)")
    assert refusal(state, presented("tokenaaa1")) is Why.EXPIRED


def test_a_deleted_runs_token_is_refused() -> None:
    ended: list[ev.AnyRunEvent] = [
        issued("tokenaaa1"),
        rank_running(0),
        attempt_running(),
        rank_exited(0),
    ]
    state = started(*ended, terminating(), completed(), delete(), deleted())
    assert refusal(state, presented("tokenaaa1")) is Why.EXPIRED


def test_a_token_is_issued_only_to_a_live_rank_of_the_current_attempt_once() -> None:
    with pytest.raises(IllegalTransition, match="issued already"):
        started(issued("tokenaaa1"), issued("tokenaaa1"))
    with pytest.raises(IllegalTransition, match="has exited"):
        started(rank_exited(0), issued("tokenaaa1"))
    with pytest.raises(IllegalTransition):
        fold([submitted(), queued(), issued("tokenaaa1")])  # not placed: no rank holds GPUs
    with pytest.raises(IllegalTransition, match="no rank 3"):
        started(issued("tokenaaa1", rank=3))


@given(
    run_id=st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True),
    token_id=st.from_regex(r"[a-z0-9]{8,32}", fullmatch=True),
    secret=st.from_regex(r"[A-Za-z0-9_-]{32,128}", fullmatch=True),
)
def test_a_token_reads_back_as_made_and_is_never_taken_for_a_key(
    run_id: str, token_id: str, secret: str
) -> None:
    token = new_token(run_id, token_id, secret)
    assert is_token(token.presented)
    assert not token.presented.startswith("rpk_")
    parsed = parse_token(token.presented)
    assert parsed is not None
    assert (parsed.run_id, parsed.token_id, parsed.secret) == (run_id, token_id, secret)
    assert secret not in token.token_hash


@pytest.mark.parametrize(
    "text",
    ["", "rpt.", "rpt.run.tokenaaa1", "rpt..tokenaaa1." + "x" * 40, "rpt.r.TOKEN.x" + "x" * 40,
     "rpk_abcdefgh1234_" + "x" * 43, "rpt.r.tokenaaa1." + "x" * 10, "rpt.r.tokenaaa1." + "x" * 200],
)  # fmt: skip
def test_a_malformed_token_is_none(text: str) -> None:
    assert parse_token(text) is None
