"""Every Python snippet of the seed's "Run Lifecycle" page (``seed/run_lifecycle.txt``),
executed as written against a local stack (issue 5).

The snippets are copied verbatim, in the page's order; only the placeholders are filled in
(``'run'`` -> a real run name, ``"name"`` -> the cluster ``local``) and the two truncated ones
completed minimally: ``config = RunConfig(`` gets its fields and its closing parenthesis, plus
``run_config = config`` (the page then submits ``run_config``); ``for log in
get_run_logs('run', failed=True):`` gets its body. The page's shell commands run too.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator

import pytest

from events.status import RunStatus
from tests.e2e.mcli_helpers import Mcli, running_stack, sdk_env, wait_for

pytestmark = pytest.mark.e2e
S = RunStatus

CREATE = """\
from mcli import create_run, RunConfig

config = RunConfig(
    name='seed-run',
    image='mosaicml/pytorch:latest',
    command='echo "rank $NODE_RANK"; [ "$NODE_RANK" = 1 ] && sleep 2 && exit 3; sleep 9',
    compute={'cluster': 'local', 'gpus': 3, 'nodes': 3},
)
run_config = config

run = create_run(run_config)
"""

GET_AND_REFRESH = """\
from mcli import get_run

run = get_run('run')

run = run.refresh()
"""

CLUSTER = """\
from mcli import get_cluster

cluster = get_cluster("name")

gpus_available = sum(i.gpus_available for i in cluster.utilization.cluster_instance_utils)
print(f"{cluster.name}: "
      f"{len(cluster.utilization.active_runs_by_user)} active, "
      f"{len(cluster.utilization.queued_runs_by_user)} queued, "
      f"{gpus_available} GPUs available")
"""

FOLLOW = """\
from mcli import follow_run_logs

for log in follow_run_logs('run'):
\tprint(log, end='')
"""

DELETE = """\
from mcli import delete_run
"""

STOP = """\
from mcli import stop_run
"""

START = """\
from mcli import start_run
"""

DESCRIBE = """\
from mcli import get_run

run = get_run('run')
"""

STATUS_AND_REASON = """\
from mcli import get_run

run = get_run('run')
print(run.status, run.reason)
"""

FAILED_LOGS = """\
from mcli import get_run_logs

for log in get_run_logs('run', failed=True):
\tprint(log, end='')
"""

RANK_LOGS = """\
from mcli import get_run_logs

for log in get_run_logs('run', rank=2):
\tprint(log, end='')
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mcli]:
    stack_dir = tmp_path_factory.mktemp("seed") / "stack"
    with running_stack(stack_dir, nodes=3) as runner, sdk_env(runner.stack):
        yield runner


def execute(snippet: str, run: str = "run", cluster: str = "name") -> tuple[dict[str, object], str]:
    """Run a snippet with its placeholders filled in; its globals and what it printed."""
    code = snippet.replace("'run'", repr(run)).replace('"name"', repr(cluster))
    scope: dict[str, object] = {"__name__": "__seed__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<seed>", "exec"), scope)
    return scope, out.getvalue()


async def test_the_seed_page_runs_as_written(stack: Mcli) -> None:
    scope, _ = execute(CREATE)
    name = scope["run"].name  # type: ignore[attr-defined]
    assert re.fullmatch(r"seed-run-[a-z]{6}", name)

    scope, _ = execute(GET_AND_REFRESH, name)
    assert scope["run"].name == name  # type: ignore[attr-defined]

    _, printed = execute(CLUSTER, name, "local")
    assert re.fullmatch(r"local: \d+ active, \d+ queued, \d+ GPUs available\n", printed)

    _, printed = execute(FOLLOW, name)
    assert "rank 0\n" in printed
    await wait_for(stack.stack, name, S.FAILED, S.COMPLETED, S.STOPPED)

    for imports in (DELETE, STOP, START):
        execute(imports, name)

    scope, _ = execute(DESCRIBE, name)
    assert scope["run"].status is S.FAILED  # type: ignore[attr-defined]

    _, printed = execute(STATUS_AND_REASON, name)
    assert printed == "FAILED Error (exit code 3)\n"

    _, printed = execute(FAILED_LOGS, name)
    assert printed == "rank 1\n"

    _, printed = execute(RANK_LOGS, name)
    assert printed.startswith("rank 2\n")

    # The page's shell commands, with the run's name for <run>.
    for command in (
        ["get", "runs"],
        ["util"],
        ["logs", name],
        ["describe", "run", name],
        ["get", "run", name],
        ["logs", name, "--rank", "2"],
        ["run", "-r", name],
        ["stop", "run", name, "-y"],
        ["delete", "run", name, "-y"],
    ):
        done = stack(*command)
        assert done.returncode == 0, (command, done.stderr)
    assert "rank 1" in stack.ok("logs", name, "--resumption", "0")
