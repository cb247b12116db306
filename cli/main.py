"""``mcli``: the command line, with mcli's commands, flags and output (and a few of runplane's
own: billing, audit, events, projections, dev).

Each command group lives in ``cli.commands.<group>`` and registers its parsers. Errors a user
can act on print one line, ``✗ Error <code>: <message>``, on stderr and exit 1 (usage errors
exit 2); a traceback means a bug in runplane, not bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from redis.exceptions import RedisError

from cli.commands import accounts, admin, describe, dev, get, logs, manage, run, secrets, util
from cli.commands.common import error
from cli.errors import ClientError, Unreachable
from cli.logsel import UsageError
from cli.stack import StackError, logs_dir, state_dir
from events.config import ConfigError
from services.core.errors import StoreUnavailable
from services.core.logging import configure_aside
from services.core.sealing import SealingError

USAGE_EXIT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcli",
        description="runplane's mcli: submit and watch GPU training runs.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (run, get, describe, logs, manage, secrets, util, admin, accounts, dev):
        module.register(subparsers)
    return parser


def log_aside() -> None:
    """What library code logs in this process (a fold's warning while the CLI folds a run's
    history) never reaches the user's terminal: it goes to the local stack's ``mcli.log``
    when there is one, else nowhere. The CLI's own messages are printed, not logged."""
    configure_aside(logs_dir(state_dir()) / "mcli.log")


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 - one exit per error kind
    parser = build_parser()
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
    except ConfigError as exc:
        error(400, str(exc))
        return 1
    except StackError as exc:
        error(500, str(exc))
        return 1
    except SealingError as exc:  # the keyring of an operator's command
        error(500, str(exc))
        return 1
    except BrokenPipeError:  # `mcli ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (StoreUnavailable, RedisError, ConnectionError) as exc:  # an operator's command
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
