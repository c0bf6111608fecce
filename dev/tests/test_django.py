"""``manage.py run_atask`` in a real, minimal Django project made by each test."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO
from servers import delete_queues, wait_until_served

import atasks

SCENARIOS = str(REPO / "dev/tests/scenarios_2019.py")
OUTPUT = ["sequence: ['first', 'FIRST!']", "parallel: [0, 1, 2, 3, 4]", "shout: DONE!"]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A Django project whose settings install django_atasks, and nothing else."""
    root = tmp_path / "site"
    (root / "mysite").mkdir(parents=True)
    (root / "mysite" / "__init__.py").write_text("")
    (root / "mysite" / "settings.py").write_text(
        textwrap.dedent(
            """
            SECRET_KEY = "only-for-tests"
            INSTALLED_APPS = ["django_atasks"]
            USE_TZ = True
            """
        )
    )
    (root / "manage.py").write_text(
        textwrap.dedent(
            """
            import os
            import sys

            if __name__ == "__main__":
                os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
                from django.core.management import execute_from_command_line

                execute_from_command_line(sys.argv)
            """
        )
    )
    return root


SECRET = "ATASKS_SECRET"


def manage(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        env={  # no ATASKS_* settings but the tests' key
            k: v for k, v in os.environ.items() if not k.startswith("ATASKS_") or k == SECRET
        },
    )


def start_server(project: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``manage.py run_atask`` in server mode, in a session of its own (for killpg)."""
    with open(log, "wb") as output:
        return subprocess.Popen(
            [sys.executable, "manage.py", "run_atask", SCENARIOS, "-M", "server", "-v", "2", *args],
            cwd=project,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_run_atask_has_the_2019_flags(project: Path) -> None:
    result = manage(project, "help", "run_atask")
    assert result.returncode == 0, result.stderr
    for flags in (
        "-M {server,client,loopback}, --mode",
        "-T {loopback,amqp}, --transport",
        "-U URL, --url URL",
        "-o [KEY=VALUE ...], --option",
    ):
        assert flags in result.stdout, flags


def test_run_atask_in_loopback_mode(project: Path) -> None:
    result = manage(project, "run_atask", SCENARIOS, "-M", "loopback")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["mode: loopback transport: loopback", *OUTPUT]


def test_options_reach_aiomain_as_in_2019(project: Path) -> None:
    (project / "show.py").write_text(
        "async def aiomain(**options):\n    print(sorted(options.items()))\n"
    )
    result = manage(project, "run_atask", "show.py", "-o", "n=1", "label=x", "-o", "mode=mine")
    assert result.returncode == 0, result.stderr
    options = dict(eval(result.stdout))  # a list of pairs of literals, printed above
    assert options["n"] == 1
    assert options["label"] == "x"
    assert options["mode"] == "mine"  # -o wins
    assert options["transport"] == "loopback"
    assert options["concurrency"] == 64


def test_settings_atasks_are_the_commands_defaults(project: Path) -> None:
    settings = project / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + 'ATASKS = {"concurrency": 7, "grace": 2.5}\n')
    (project / "show.py").write_text(
        "async def aiomain(**options):\n    print(sorted(options.items()))\n"
    )
    result = manage(project, "run_atask", "show.py", "--grace", "1")
    assert result.returncode == 0, result.stderr
    options = dict(eval(result.stdout))  # a list of pairs of literals, printed above
    assert options["concurrency"] == 7
    assert options["grace"] == 1.0  # the command line wins


def test_served_atasks_close_old_connections(project: Path) -> None:
    (project / "chain.py").write_text(
        "import atasks\n\n"
        "@atasks.atask\nasync def noop() -> None: ...\n\n"
        "async def aiomain():\n"
        "    print([type(one).__name__ for one in atasks.get_router().caller.middleware])\n"
    )
    result = manage(project, "run_atask", "chain.py")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['CloseOldConnections']"


def test_a_bad_settings_atasks_stops_the_command(project: Path) -> None:
    settings = project / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + 'ATASKS = {"concurency": 7}\n')
    result = manage(project, "run_atask", "missing.py")
    assert result.returncode == 1
    assert "settings.ATASKS['concurency']: not a setting of atasks" in result.stderr


def test_call_command_as_the_2019_tests_did(project: Path) -> None:
    script = (
        "import django\n"
        "django.setup()\n"
        "from django.core.management import call_command\n"
        "call_command('run_atask', 'scenarios_2019', verbosity=3, mode='loopback')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "mysite.settings",
            "PYTHONPATH": os.pathsep.join([str(project), str(REPO / "dev/tests")]),
        },
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-3:] == OUTPUT


def test_a_bad_target_is_one_line(project: Path) -> None:
    result = manage(project, "run_atask", "missing.py")
    assert result.returncode == 1
    assert result.stderr.strip() == "CommandError: no such file: missing.py"


@pytest.mark.timeout(120)
async def test_run_atask_server_with_workers_and_client_over_rabbitmq(
    project: Path, amqp_url: str, tmp_path: Path
) -> None:
    import scenarios_2019

    log = tmp_path / "server.log"
    server = start_server(project, log, "--workers", "2", "-T", "amqp", "-U", amqp_url)
    try:
        await atasks.setup("amqp", url=amqp_url)
        await wait_until_served(scenarios_2019.all_at_once, 1)
        client = await asyncio.to_thread(
            manage, project, "run_atask", SCENARIOS, "-M", "client", "-T", "amqp", "-U", amqp_url
        )
        assert client.returncode == 0, client.stderr + log.read_text()
        assert client.stdout.splitlines() == ["mode: client transport: amqp", *OUTPUT]
        server.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.wait, 30) == 0, log.read_text()
        assert log.read_text().count("worker") >= 2  # the supervisor started two
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(30)
        await delete_queues(amqp_url, scenarios_2019)
