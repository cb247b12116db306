"""Who may see, read or act on a run (``events.access``): one rule for every action."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from events.access import (
    AccessDenied,
    Action,
    AdminOnly,
    Principal,
    RunNotFound,
    administer,
    allowed,
    authorize,
    check,
    may,
    visible,
)
from services.api.runs import forbidden

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


# --- principals: roles and visibility (issue 13) ----------------------------------------------

NAMES = st.sampled_from([ALICE, BOB, "carol", "root"])
ROLES = st.sampled_from(["user", "admin"])
PRINCIPALS = st.builds(Principal, name=NAMES, role=ROLES)
ACTIONS = st.sampled_from(list(Action))


@given(principal=PRINCIPALS, action=ACTIONS, all_users=st.booleans())
def test_own_runs_are_always_visible_and_allowed(
    principal: Principal, action: Action, all_users: bool
) -> None:
    assert visible(principal, principal.name)
    assert allowed(principal, action, principal.name, all_users=all_users)
    authorize(principal, action, "run-x", principal.name, all_users=all_users)


@given(name=NAMES, owner=NAMES, action=ACTIONS, all_users=st.booleans())
def test_a_user_never_sees_nor_acts_on_another_users_run(
    name: str, owner: str, action: Action, all_users: bool
) -> None:
    assume(name != owner)
    principal = Principal(name=name, role="user")
    assert not visible(principal, owner)
    assert not allowed(principal, action, owner, all_users=all_users)
    with pytest.raises(RunNotFound) as refusal:
        authorize(principal, action, "hello-abcdef", owner, all_users=all_users)
    assert str(refusal.value) == "Run hello-abcdef not found"
    assert owner not in str(refusal.value), "another user's name never leaks"


@given(name=NAMES, owner=NAMES, action=ACTIONS, all_users=st.booleans())
def test_an_admin_sees_every_run_and_acts_on_anothers_exactly_with_all_users(
    name: str, owner: str, action: Action, all_users: bool
) -> None:
    assume(name != owner)
    principal = Principal(name=name, role="admin")
    assert visible(principal, owner)
    assert allowed(principal, action, owner, all_users=all_users) is all_users
    if all_users:
        authorize(principal, action, "hello-abcdef", owner, all_users=True)
    else:
        with pytest.raises(AccessDenied) as denied:
            authorize(principal, action, "hello-abcdef", owner, all_users=False)
        assert denied.value.admin
        assert "add --all-users" in str(forbidden(denied.value))


@given(principal=PRINCIPALS, owner=NAMES, action=ACTIONS, all_users=st.booleans())
def test_the_principal_rule_is_the_one_rule_the_cli_asks(
    principal: Principal, owner: str, action: Action, all_users: bool
) -> None:
    assert allowed(principal, action, owner, all_users=all_users) == may(
        principal.name, action, owner, all_users=all_users, admin=principal.admin
    )
    if allowed(principal, action, owner, all_users=all_users):
        assert visible(principal, owner), "what one may act on, one sees"


@given(PRINCIPALS)
def test_only_an_admin_administers(principal: Principal) -> None:
    if principal.admin:
        administer(principal, "add users")
    else:
        with pytest.raises(AdminOnly, match=f"only an admin may add users; {principal.name}"):
            administer(principal, "add users")
