"""The supervisor's restart rule: the wait doubles while a service keeps dying, up to a cap, and
starts over once a process has stayed up; how an exit is shown."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cli.supervisor import INITIAL_DELAY_S, MAX_DELAY_S, STEADY_S, exit_text, next_delay


def test_the_wait_doubles_while_a_service_keeps_dying_and_is_capped() -> None:
    waits = []
    previous = None
    for _ in range(12):
        previous = next_delay(previous, up_for_s=0.5)
        waits.append(previous)
    assert waits[:4] == [INITIAL_DELAY_S, 0.2, 0.4, 0.8]
    assert waits[-1] == MAX_DELAY_S
    assert waits == sorted(waits)


@given(previous=st.floats(INITIAL_DELAY_S, MAX_DELAY_S), up_for_s=st.floats(0, 1e6))
def test_a_process_that_stayed_up_starts_the_waits_over(previous: float, up_for_s: float) -> None:
    wait = next_delay(previous, up_for_s)
    assert INITIAL_DELAY_S <= wait <= MAX_DELAY_S
    assert (wait == INITIAL_DELAY_S) or up_for_s < STEADY_S


def test_an_exit_reads_as_its_code_or_its_signal() -> None:
    assert exit_text(1) == "exit 1"
    assert exit_text(0) == "exit 0"
    assert exit_text(-9) == "SIGKILL"
    assert exit_text(None) == "unknown"
