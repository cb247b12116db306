"""Who may read or act on a run (``events.access``): one rule for every action."""

from __future__ import annotations

import pytest

from cli.client import forbidden
from events.access import AccessDenied, Action, check, may

ALICE, BOB = "alice@example.com", "bob@example.com"


@pytest.mark.parametrize("action", list(Action))
def test_a_user_may_do_anything_to_their_own_runs_and_nothing_to_others(action: Action) -> None:
    for all_users in (False, True):
        for admin in (False, True):
            assert may(ALICE, action, ALICE, all_users=all_users, admin=admin)
    assert not may(ALICE, action, BOB, all_users=False, admin=True)
    assert not may(ALICE, action, BOB, all_users=True, admin=False)
    assert may(ALICE, action, BOB, all_users=True, admin=True)


def test_a_refusal_says_whose_run_it_is_and_what_to_do() -> None:
    with pytest.raises(AccessDenied) as denied:
        check(ALICE, Action.STOP, "hello-abcdef", BOB, all_users=False, admin=True)
    assert str(forbidden(denied.value)) == (
        f"Run hello-abcdef belongs to {BOB}, not {ALICE}: "
        "add --all-users to stop another user's run"
    )
    assert forbidden(denied.value).code == 403
    with pytest.raises(AccessDenied) as not_admin:
        check(ALICE, Action.LOGS, "hello-abcdef", BOB, all_users=True, admin=False)
    assert "only an admin may read the logs of another user's run" in str(
        forbidden(not_admin.value)
    )
