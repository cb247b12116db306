"""What the mcli command and the SDK share: finding runplane, and carrying out a user's requests.

Finding the log: ``RUNPLANE_REDIS_URL`` if set, else the local stack recorded under the state
directory (``RUNPLANE_HOME``, default ``~/.local/state/runplane``), started by ``mcli dev up``.
Requests are decided by the API server's own rules (``services.api.runs``): one place.
"""

from __future__ import annotations

import getpass
import os
import uuid
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, RedisError

from cli.stack import LocalStack
from events import access, commands, keys
from events.access import Principal
from events.codec import Recorded
from events.lifecycle import RunState
from events.spec import RunSpec
from services.api.errors import ApiError
from services.api.runs import RunRequests
from services.core.passwords import PasswordFileError, redacted
from services.core.settings import Settings
from services.core.store import EventStore


class ClientError(Exception):
    """Something the user asked cannot be done; ``str()`` says what and what to do.

    ``code`` is shown as mcli shows the API's status (``✗ Error 404: Run x not found``).
    """

    code = 400


class NotFound(ClientError):
    code = 404


class Refused(ClientError):
    """The request does not fit the run's state (stop a finished run, restart a running one)."""

    code = 409


class Forbidden(ClientError):
    """The run is another user's (``events.access``)."""

    code = 403


def client_error(error: ApiError) -> ClientError:
    """The CLI's error for the API's answer, with the same code and words."""
    kinds: dict[int, type[ClientError]] = {404: NotFound, 409: Refused, 403: Forbidden}
    found = kinds.get(int(error.code), ClientError)(error.message)
    found.code = int(error.code)
    return found


class Unreachable(ClientError):
    """runplane's log cannot be reached (no local stack, a server that does not answer)."""

    code = 503


def state_dir() -> Path:
    home = os.environ.get("RUNPLANE_HOME")
    if home:
        return Path(home)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "runplane"


def current_user() -> str:
    return os.environ.get("RUNPLANE_USER") or getpass.getuser()


def new_id() -> str:
    return uuid.uuid4().hex


def find_url() -> tuple[str, Path | None]:
    """The log's URL and, for the local stack, its state directory."""
    if url := os.environ.get("RUNPLANE_REDIS_URL"):
        return url, None
    stack = LocalStack.find(state_dir())
    if stack is None:
        raise Unreachable(
            "no runplane to talk to: start a local one with `mcli dev up`, "
            "or set RUNPLANE_REDIS_URL to your deployment's Redis"
        )
    return stack.url, stack.state_dir


def unreachable_message(url: str, exc: BaseException | None = None) -> str:
    why = f" ({exc})" if exc is not None and str(exc) else ""
    url = redacted(url)
    if isinstance(exc, AuthenticationError):
        return (
            f"runplane's log at {url} refused the login{why}: set RUNPLANE_REDIS_USERNAME and "
            "RUNPLANE_REDIS_PASSWORD_FILE (docs/deploying.md#credentials)"
        )
    return (
        f"cannot reach runplane's log at {url}{why}: start a local stack with `mcli dev up`, "
        "or set RUNPLANE_REDIS_URL to your deployment's Redis"
    )


def log_settings(url: str, stack_dir: Path | None) -> Settings:
    """How to reach the log at ``url``: as the local stack's operator when ``stack_dir`` is the
    stack's, else as the environment says (``RUNPLANE_REDIS_USERNAME`` and
    ``RUNPLANE_REDIS_PASSWORD_FILE``, or a login in the URL)."""
    if stack_dir is None:
        return Settings(redis_url=url)
    return LocalStack(stack_dir).operator_settings(url)


class Client:
    def __init__(self, url: str, stack_dir: Path | None = None) -> None:
        self.url = url
        self.stack_dir = stack_dir
        try:
            self.store = EventStore.from_settings(log_settings(url, stack_dir))
        except PasswordFileError as exc:
            raise ClientError(f"{exc} (RUNPLANE_REDIS_PASSWORD_FILE names it)") from None
        self.user = current_user()
        #: Until the CLI speaks to the API server (issue 13), every user is an admin:
        #: --all-users is theirs to give.
        self.admin = True
        self.principal = Principal(name=self.user, role="admin")
        self.requests = RunRequests(self.store)

    @classmethod
    def discover(cls) -> Client:
        return cls(*find_url())

    @property
    def redis(self) -> aioredis.Redis:
        return self.store.redis

    @property
    def archive_dir(self) -> Path | None:
        archive = os.environ.get("RUNPLANE_ARCHIVE_DIR")
        if archive:
            return Path(archive)
        return self.stack_dir / "archive" if self.stack_dir else None

    async def close(self) -> None:
        await self.store.close()

    async def submit(self, spec: RunSpec) -> tuple[str, str]:
        """Submit a new run; returns its run id and unique name."""
        try:
            row, _ = await self.requests.submit(self.principal, spec)
        except ApiError as error:
            raise client_error(error) from None
        return row.run_uid, row.name

    async def resolve(self, run: str) -> str:
        """The run id of a run name (or of a run id)."""
        run_id = await self.redis.get(keys.run_name(run))
        if isinstance(run_id, bytes):
            return run_id.decode()
        if await self.store.load_run(run) is not None:
            return run
        raise NotFound(f"Run {run} not found")

    async def ping(self) -> None:
        """``Unreachable`` unless the log's server answers."""
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            raise Unreachable(unreachable_message(self.url, exc)) from None

    async def history(self, run: str) -> tuple[str, list[Recorded]]:
        """The run id of ``run`` (name or id) and every event of its own history, in order."""
        run_id = await self.resolve(run)
        records = await self.store.history(f"run:{run_id}")
        if not records:
            raise NotFound(f"Run {run} not found")
        return run_id, records

    async def state(self, run: str) -> RunState:
        run_id = await self.resolve(run)
        state = await self.store.load_run(run_id)
        if state is None:
            raise NotFound(f"Run {run} not found")
        return state

    def allow(self, action: access.Action, run: str, owner: str, *, all_users: bool) -> None:
        """``Forbidden`` unless this user may ``action`` the run ``owner`` submitted."""
        try:
            RunRequests.authorize(self.principal, action, run, owner, all_users=all_users)
        except ApiError as error:
            raise client_error(error) from None

    async def request(
        self, run: str, command: commands.Command, *, all_users: bool = False
    ) -> RunState:
        """Carry out a stop, restart, delete or update of a run this user may act on (another
        user's with ``all_users``); ``ClientError`` if it is refused."""
        try:
            views = await self.requests.carry_out(
                self.principal, [run], command, all_users=all_users
            )
        except ApiError as error:
            raise client_error(error) from None
        state = await self.store.load_run(views[0][0].run_uid)
        assert state is not None
        return state
