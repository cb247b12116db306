"""``mcli``: the command line, with mcli's commands, flags and output (and a few of runplane's
own: billing, audit, events, projections, dev).

Each command group lives in ``cli.commands.<group>`` and registers its parsers. A command
imports its own group only (``COMMANDS``): ``mcli get runs`` never loads what ``mcli dev up`` or
``mcli admin archive`` need, so it starts in a fraction of the time. Errors a user can act on
print one line, ``✗ Error <code>: <message>``, on stderr and exit 1 (usage errors exit 2); a
traceback means a bug in runplane, not bad input.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from cli.commands.common import error
from cli.errors import ClientError, StackError, Unreachable, UsageError
from cli.stackfiles import logs_dir, state_dir
from services.core.errors import StoreUnavailable
from services.core.logging import configure_aside

USAGE_EXIT = 2

#: Each command word and the group (``cli.commands.<group>``) that registers it, in the order
#: ``mcli --help`` lists them (``tests/unit/cli/test_arguments.py`` checks it against what each
#: group registers).
COMMANDS = {
    "run": "run",
    "get": "get",
    "describe": "describe",
    "logs": "logs",
    "stop": "manage",
    "delete": "manage",
    "update": "manage",
    "create": "secrets",
    "util": "util",
    "billing": "admin",
    "audit": "admin",
    "events": "admin",
    "projections": "admin",
    "admin": "accounts",
    "dev": "dev",
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of ``argv``'s command (``mcli``'s only word before it is the command): its own
    group's parsers, or every group's where the command is none of them (``--help``, a typo)."""
    parser = argparse.ArgumentParser(
        prog="mcli",
        description="runplane's mcli: submit and watch GPU training runs.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    words = sys.argv[1:] if argv is None else argv
    command = words[0] if words else None
    groups = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for group in groups:
        importlib.import_module(f"cli.commands.{group}").register(subparsers)
    return parser


def _if_loaded(module: str, name: str) -> tuple[type[Exception], ...]:
    """The exception class ``module.name`` where this command loaded ``module``, else none:
    a module never imported raises nothing, so its errors are caught without loading it."""
    found = sys.modules.get(module)
    return (getattr(found, name),) if found is not None else ()


def _log_unreachable() -> tuple[type[Exception], ...]:
    """An operator's command (``mcli dev``, ``mcli admin archive``) that cannot reach the log."""
    return (StoreUnavailable, ConnectionError, *_if_loaded("redis", "RedisError"))


def log_aside() -> None:
    """What library code logs in this process (a fold's warning while the CLI folds a run's
    history) never reaches the user's terminal: it goes to the local stack's ``mcli.log``
    when there is one, else nowhere. The CLI's own messages are printed, not logged."""
    configure_aside(logs_dir(state_dir()) / "mcli.log")


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 - one exit per error kind
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    log_aside()
    try:
        code: int = args.handler(args)
    except UsageError as exc:  # the one line says what to give; no usage block above it
        error(exc.code, str(exc))
        return USAGE_EXIT
    except ClientError as exc:
        error(exc.code, str(exc))
        return 1
    except _if_loaded("events.config", "ConfigError") as exc:
        error(400, str(exc))
        return 1
    except StackError as exc:
        error(500, str(exc))
        return 1
    except _if_loaded("services.core.sealing", "SealingError") as exc:  # an operator's keyring
        error(500, str(exc))
        return 1
    except BrokenPipeError:  # `mcli ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except _log_unreachable() as exc:  # an operator's command
        error(
            Unreachable.code,
            f"cannot reach runplane's log ({exc}): start a local stack with `mcli dev up`, "
            "or set RUNPLANE_REDIS_URL to your deployment's Valkey",
        )
        return 1
    except KeyboardInterrupt:
        return 130
    return code


def run_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run_main()
