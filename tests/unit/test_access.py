"""Who may see, read or act on a run (``events.access``): one rule for every action."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from events.access import (
    RUN_TOKEN_ACTIONS,
    AccessDenied,
    Action,
    AdminOnly,
    Principal,
    RunNotFound,
    SecretAction,
    SecretsForbidden,
    administer,
    allowed,
    authorize,
    authorize_secrets,
    check,
    may,
    may_manage_secrets,
    may_open_session,
    sees_runs_of,
    visible,
)
from events.model import Via
from services.api.runs import forbidden

ALICE, BOB = "alice@example.com", "bob@example.com"
RUN = "0123456789abcdef"


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
    assert visible(principal, principal.name, RUN)
    assert allowed(principal, action, principal.name, RUN, all_users=all_users)
    authorize(principal, action, "run-x", principal.name, RUN, all_users=all_users)


@given(name=NAMES, owner=NAMES, action=ACTIONS, all_users=st.booleans())
def test_a_user_never_sees_nor_acts_on_another_users_run(
    name: str, owner: str, action: Action, all_users: bool
) -> None:
    assume(name != owner)
    principal = Principal(name=name, role="user")
    assert not visible(principal, owner, RUN)
    assert not allowed(principal, action, owner, RUN, all_users=all_users)
    with pytest.raises(RunNotFound) as refusal:
        authorize(principal, action, "hello-abcdef", owner, RUN, all_users=all_users)
    assert str(refusal.value) == "Run hello-abcdef not found"
    assert owner not in str(refusal.value), "another user's name never leaks"


@given(name=NAMES, owner=NAMES, action=ACTIONS, all_users=st.booleans())
def test_an_admin_sees_every_run_and_acts_on_anothers_exactly_with_all_users(
    name: str, owner: str, action: Action, all_users: bool
) -> None:
    assume(name != owner)
    principal = Principal(name=name, role="admin")
    assert visible(principal, owner, RUN)
    assert allowed(principal, action, owner, RUN, all_users=all_users) is all_users
    if all_users:
        authorize(principal, action, "hello-abcdef", owner, RUN, all_users=True)
    else:
        with pytest.raises(AccessDenied) as denied:
            authorize(principal, action, "hello-abcdef", owner, RUN, all_users=False)
        assert denied.value.admin
        assert "add --all-users" in str(forbidden(denied.value))


@given(principal=PRINCIPALS, owner=NAMES, action=ACTIONS, all_users=st.booleans())
def test_the_principal_rule_is_the_one_rule_the_cli_asks(
    principal: Principal, owner: str, action: Action, all_users: bool
) -> None:
    assert allowed(principal, action, owner, RUN, all_users=all_users) == may(
        principal.name, action, owner, all_users=all_users, admin=principal.admin
    )
    if allowed(principal, action, owner, RUN, all_users=all_users):
        assert visible(principal, owner, RUN), "what one may act on, one sees"


@given(PRINCIPALS)
def test_only_an_admin_administers(principal: Principal) -> None:
    if principal.admin:
        administer(principal, "add users")
    else:
        with pytest.raises(AdminOnly, match=f"only an admin may add users; {principal.name}"):
            administer(principal, "add users")


# --- a run's own token (issue 19) ---------------------------------------------------------------

RUN_IDS = st.sampled_from([RUN, "fedcba9876543210", "r-3"])
TOKENS = st.builds(
    Principal,
    name=NAMES,
    role=ROLES,
    via=st.builds(Via, run_id=RUN_IDS, run=st.just("train-abcdef"), attempt=st.integers(0, 3)),
)


@given(token=TOKENS, action=ACTIONS, all_users=st.booleans())
def test_a_run_token_may_do_its_few_things_to_its_own_run_only(
    token: Principal, action: Action, all_users: bool
) -> None:
    assert token.via is not None
    own = token.via.run_id
    assert visible(token, token.name, own)
    assert allowed(token, action, token.name, own, all_users=all_users) is (
        action in RUN_TOKEN_ACTIONS
    )
    if action not in RUN_TOKEN_ACTIONS:
        with pytest.raises(AccessDenied) as denied:
            authorize(token, action, "train-abcdef", token.name, own, all_users=all_users)
        assert denied.value.token
        assert "use an API key" in str(forbidden(denied.value))


@given(token=TOKENS, run_id=RUN_IDS, owner=NAMES, action=ACTIONS, all_users=st.booleans())
def test_every_other_run_is_not_there_for_a_run_token_whoever_owns_it(
    token: Principal, run_id: str, owner: str, action: Action, all_users: bool
) -> None:
    assert token.via is not None
    assume(run_id != token.via.run_id)
    assert not visible(token, owner, run_id)
    assert not allowed(token, action, owner, run_id, all_users=all_users)
    with pytest.raises(RunNotFound):
        authorize(token, action, "other-abcdef", owner, run_id, all_users=all_users)


@given(TOKENS)
def test_a_run_token_is_never_an_admin_even_of_an_admins_run(token: Principal) -> None:
    assert not token.admin
    with pytest.raises(AdminOnly, match=r"only an admin may add users; .* \(run train-abcdef"):
        administer(token, "add users")
    assert sees_runs_of(token, token.name), "it lists its owner's runs, of which it sees one"


# --- secrets (issue 21) -----------------------------------------------------------------------

SECRET_ACTIONS = st.sampled_from(list(SecretAction))
VIA = Via(run_id=RUN, run="hello-abcdef", attempt=0)


@given(principal=PRINCIPALS, owner=NAMES, action=SECRET_ACTIONS)
def test_secrets_are_their_owners_and_an_admin_only_lists_and_deletes_others(
    principal: Principal, owner: str, action: SecretAction
) -> None:
    allowed_ = may_manage_secrets(principal, action, owner)
    if principal.name == owner:
        assert allowed_
    elif principal.role == "admin":
        assert allowed_ == (action is not SecretAction.CREATE)
    else:
        assert not allowed_


@given(name=NAMES, role=ROLES, owner=NAMES, action=SECRET_ACTIONS)
def test_a_runs_token_manages_no_secrets_not_even_its_owners(
    name: str, role: str, owner: str, action: SecretAction
) -> None:
    principal = Principal(name=name, role=role, via=VIA)  # type: ignore[arg-type]
    assert not may_manage_secrets(principal, action, owner)
    with pytest.raises(SecretsForbidden) as refused:
        authorize_secrets(principal, action, owner)
    assert refused.value.token


def test_no_one_creates_a_secret_in_another_users_name() -> None:
    root = Principal(name="root", role="admin")
    with pytest.raises(SecretsForbidden, match=f"root may not create secrets of {ALICE}"):
        authorize_secrets(root, SecretAction.CREATE, ALICE)
    authorize_secrets(root, SecretAction.LIST, ALICE)
    authorize_secrets(root, SecretAction.DELETE, ALICE)


@given(principal=st.builds(Principal, name=NAMES, role=ROLES), token=TOKENS)
def test_a_users_key_may_open_a_console_session_and_a_run_token_may_not(
    principal: Principal, token: Principal
) -> None:
    assert may_open_session(principal)
    assert not may_open_session(token)
