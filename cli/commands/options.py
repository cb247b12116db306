"""The scheduling options that ``mcli run`` and ``mcli update run`` share, and the run YAML's
keys as ``mcli run --help`` lists them.

One definition for both commands: they accept the same priority names (``events.spec``'s) and
describe each option, unit included, with the words of the YAML key it overrides
(``events.config``).
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from cli.commands.common import hours, non_negative
from events.config import key_table, scheduling_help
from events.spec import PRIORITIES

_WIDTH = 100


def add_scheduling(parser: argparse.ArgumentParser, *, watchdog: bool) -> None:
    """``--priority``, ``--[no-]preemptible``, ``--max-retries``, ``--max-duration`` (and, with
    ``watchdog``, ``--[no-]retry-on-system-failure``)."""
    said = scheduling_help()
    parser.add_argument("--priority", choices=PRIORITIES, help=said["priority"])
    parser.add_argument(
        "--preemptible",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=said["preemptible"],
    )
    parser.add_argument(
        "--max-retries",
        "--max_retries",
        dest="max_retries",
        type=non_negative,
        metavar="N",
        help=said["max_retries"],
    )
    parser.add_argument(
        "--max-duration",
        "--max_duration",
        dest="max_duration",
        type=hours,
        metavar="HOURS",
        help=said["max_duration"],
    )
    if watchdog:
        parser.add_argument(
            "--retry-on-system-failure",
            "--watchdog",
            dest="retry_on_system_failure",
            action=argparse.BooleanOptionalAction,
            default=None,
            help=said["retry_on_system_failure"],
        )


def scheduling_of(args: argparse.Namespace) -> dict[str, Any]:
    """The scheduling options given (None: not given), by their YAML names."""
    names = ("priority", "preemptible", "max_retries", "max_duration", "retry_on_system_failure")
    return {name: getattr(args, name, None) for name in names}


def yaml_keys_help() -> str:
    """The run YAML's keys, each with its type and meaning: ``mcli run --help``'s epilog."""
    lines = ["The run YAML's keys (also in docs/run-yaml.md):"]
    for key, type_name, meaning in key_table():
        lines += textwrap.wrap(
            f"{key} ({type_name}): {meaning}",
            width=_WIDTH,
            initial_indent="  ",
            subsequent_indent="      ",
        )
    return "\n".join(lines)
