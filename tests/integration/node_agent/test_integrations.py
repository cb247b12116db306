"""Integrations on a real node-agent, without network: git_repo from a local bare repository
and pip_packages from a local package directory (its build backend lives in the package, so
pip downloads nothing), and a failing integration."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from events.model import IntegrationFailed, IntegrationFinished, IntegrationStarted, RankExited
from events.status import RunStatus
from tests.integration.node_agent.conftest import AgentFactory
from tests.integration.node_agent.harness import MiniScheduler, lines, spec
from tests.ranks import open_to_ranks, trusting_git
from tests.waiting import eventually

_BACKEND = '''"""A PEP 517 backend of a few lines: builds the tinypkg wheel, downloading nothing."""
import base64, hashlib, pathlib, zipfile

DIST = "tinypkg-0.1.dist-info"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    files = {
        "tinypkg/__init__.py": pathlib.Path("tinypkg/__init__.py").read_bytes(),
        f"{DIST}/METADATA": b"Metadata-Version: 2.1\\nName: tinypkg\\nVersion: 0.1\\n",
        f"{DIST}/WHEEL": b"Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }
    def digest(data):
        return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record = "".join(f"{p},sha256={digest(d)},{len(d)}\\n" for p, d in files.items())
    name = "tinypkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(pathlib.Path(wheel_directory) / name, "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
        wheel.writestr(f"{DIST}/RECORD", record + f"{DIST}/RECORD,,\\n")
    return name
'''
#: The same backend, but its build waits for the file ``GATE`` names, having said it began (a
#: file named by its pid in ``BEGUN``): a setup that is under way when the agent is killed.
_SLOW_BACKEND = _BACKEND.replace(
    "def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):\n",
    "def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):\n"
    "    import os, time\n"
    "    pathlib.Path(os.environ['BEGUN'], str(os.getpid())).touch()\n"
    "    deadline = time.monotonic() + 120\n"
    "    while not os.path.exists(os.environ['GATE']) and time.monotonic() < deadline:\n"
    "        time.sleep(0.05)  # allowed: the build waits for the test, within a deadline\n",
)
_PYPROJECT = """[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]
"""


def _git(*args: str, cwd: Path) -> str:
    ident = ["-c", "user.name=Test", "-c", "user.email=test@example.com"]
    done = subprocess.run(
        ["git", *ident, *args], cwd=cwd, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


@pytest.fixture
def bare_repo(tmp_path: Path) -> tuple[Path, str]:
    """A bare repository whose ``main`` holds two commits; returns it and the first commit."""
    bare = tmp_path / "origin" / "hello.git"
    bare.mkdir(parents=True)
    _git("init", "--bare", "-q", cwd=bare)
    work = tmp_path / "work"
    work.mkdir()
    _git("init", "-q", "-b", "main", cwd=work)
    (work / "hello.txt").write_text("version one\n")
    _git("add", "hello.txt", cwd=work)
    _git("commit", "-q", "-m", "one", cwd=work)
    first = _git("rev-parse", "HEAD", cwd=work)
    (work / "hello.txt").write_text("version two\n")
    _git("commit", "-q", "-am", "two", cwd=work)
    _git("push", "-q", str(bare), "main", cwd=work)
    open_to_ranks(bare.parent)  # the ranks clone it as their own users
    return bare, first


@pytest.fixture
def package_dir(tmp_path: Path) -> Path:
    package = tmp_path / "tinypkg-src"
    (package / "tinypkg").mkdir(parents=True)
    (package / "pyproject.toml").write_text(_PYPROJECT)
    (package / "backend.py").write_text(_BACKEND)
    (package / "tinypkg" / "__init__.py").write_text('GREETING = "hi from tinypkg"\n')
    return open_to_ranks(package, writable=True)  # pip builds in the tree, as the rank's user


async def test_git_repo_and_pip_packages_from_local_sources(
    make_agent: AgentFactory,
    scheduler: MiniScheduler,
    redis: aioredis.Redis,
    bare_repo: tuple[Path, str],
    package_dir: Path,
) -> None:
    bare, first_commit = bare_repo
    agent = make_agent()
    await agent.start()
    integrations = [
        {"integration_type": "git_repo", "git_repo": str(bare), "git_branch": "main"},
        {
            "integration_type": "git_repo",
            "git_repo": str(bare),
            "git_commit": first_commit,
            "path": "pinned",
        },
        {"integration_type": "pip_packages", "packages": [str(package_dir)]},
    ]
    command = (
        "cat hello/hello.txt pinned/hello.txt; "
        'python -c "import tinypkg; print(tinypkg.GREETING)"; '
        'test "$(command -v python)" = "$VIRTUAL_ENV/bin/python" && echo venv first'
    )
    trust = trusting_git(bare.parent)  # the test's repository, read by the rank's user
    run_spec = spec(
        command, integrations=integrations, env_variables={"PIP_NO_INDEX": "1", **trust}
    )
    run_id = await scheduler.submit(run_spec, [("node-a", [0])])

    await scheduler.wait_status(run_id, RunStatus.COMPLETED, within=60)

    output = await lines(redis, run_id)
    assert b"version two" in output  # the branch's head
    assert b"version one" in output  # the pinned commit
    assert b"hi from tinypkg" in output
    assert b"venv first" in output
    events = await scheduler.events(run_id)
    started = [e.index for e in events if isinstance(e, IntegrationStarted)]
    finished = [(e.index, e.integration_type) for e in events if isinstance(e, IntegrationFinished)]
    assert started == [0, 1, 2]
    assert finished == [(0, "git_repo"), (1, "git_repo"), (2, "pip_packages")]


async def test_a_failing_integration_fails_the_rank_with_the_tools_last_words(
    make_agent: AgentFactory, scheduler: MiniScheduler, tmp_path: Path
) -> None:
    agent = make_agent()
    await agent.start()
    missing = tmp_path / "no-such-repo.git"
    integrations = [{"integration_type": "git_repo", "git_repo": str(missing)}]
    run_id = await scheduler.submit(
        spec("echo never", integrations=integrations), [("node-a", [0])]
    )

    state = await scheduler.wait_status(run_id, RunStatus.FAILED)

    events = await scheduler.events(run_id)
    failed = next(e for e in events if isinstance(e, IntegrationFailed))
    assert failed.integration_type == "git_repo"
    assert "does not exist" in failed.error
    exited = next(e for e in events if isinstance(e, RankExited))
    assert exited.exit_code is None
    assert exited.reason is not None
    assert (exited.reason.category, exited.reason.code) == ("user", "IntegrationFailed")
    assert "does not exist" in exited.reason.message
    assert state.latest.reason is not None
    assert state.latest.reason.code == "IntegrationFailed"


async def test_a_setup_cut_short_by_a_kill_9_of_the_agent_begins_again_as_the_same_user(
    make_agent: AgentFactory, scheduler: MiniScheduler, redis: aioredis.Redis, tmp_path: Path
) -> None:
    package = tmp_path / "slowpkg"
    (package / "tinypkg").mkdir(parents=True)
    (package / "pyproject.toml").write_text(_PYPROJECT)
    (package / "backend.py").write_text(_SLOW_BACKEND)
    (package / "tinypkg" / "__init__.py").write_text('GREETING = "hi from tinypkg"\n')
    open_to_ranks(package, writable=True)
    begun = open_to_ranks(tmp_path / "begun", writable=True)
    gate = open_to_ranks(tmp_path / "gate") / "go"
    agent = make_agent()
    await agent.start()
    integrations = [{"integration_type": "pip_packages", "packages": [str(package)]}]
    env = {"PIP_NO_INDEX": "1", "BEGUN": str(begun), "GATE": str(gate)}
    command = 'python -c "import tinypkg; print(tinypkg.GREETING)"'
    run_spec = spec(command, integrations=integrations, env_variables=env)
    run_id = await scheduler.submit(run_spec, [("node-a", [0])])
    [first] = await eventually(lambda: [int(p.name) for p in begun.iterdir()], what="a build")
    first_user = agent.rank_dir(run_id).record().user

    await agent.kill()
    await agent.start()
    # The new agent ends what the first setup left running, then sets up again from scratch.
    await eventually(lambda: not Path(f"/proc/{first}").exists(), what="the first build gone")
    await eventually(lambda: len(list(begun.iterdir())) == 2, what="the second build")
    assert agent.rank_dir(run_id).record().setup_tries == 2
    assert agent.rank_dir(run_id).record().user == first_user  # the same uid: the run's
    gate.touch()

    state = await scheduler.wait_status(run_id, RunStatus.COMPLETED, within=60)
    assert len(state.attempts) == 1
    assert b"hi from tinypkg" in await lines(redis, run_id)
