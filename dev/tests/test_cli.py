"""``atasks run`` as a user runs it: a subprocess."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from atasks.testing.rabbitnode import RabbitNode


def atasks_run(
    *args: str, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "atasks", "run", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_scenarios_run_out_of_the_box() -> None:
    result = atasks_run("examples/scenarios.py")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "sequence: 55",
        "parallel: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]",
        "recursion: fibonacci(10) = 55",
        "stream: [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]",
        "error: NotEnoughMoney cannot withdraw 20 from 5",
    ]


def test_options_reach_aiomain_and_env_sets_the_codec() -> None:
    result = atasks_run("examples/scenarios.py", "-o", "n=3", env={"ATASKS_CODEC": "json"})
    assert "recursion: fibonacci(3) = 2" in result.stdout
    assert "stream: [3, 2, 1]" in result.stdout
    # JSON carries no custom exception types: it crosses as RemoteError, which aiomain does not
    # catch, so the run fails with that one line. The serving side (this process, in loopback
    # mode) logs it at INFO only: withdraw throws NotEnoughMoney by contract.
    assert result.returncode == 1
    assert result.stderr == "Error: examples.scenarios.NotEnoughMoney: cannot withdraw 20 from 5\n"


def test_file_and_module_name_give_the_same_atask_names(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text(
        "from atasks import atask\n"
        "@atask\nasync def f(): ...\n"
        "async def aiomain():\n"
        "    print(f.name)\n"
    )
    by_file = atasks_run(str(package / "mod.py"), cwd=tmp_path)
    by_module = atasks_run("pkg.mod", cwd=tmp_path)
    assert by_file.stdout == by_module.stdout == "pkg.mod.f\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.py"], "no such file: missing.py"),
        (["no.such.module"], "no module named 'no.such.module'"),
        (["examples/scenarios.py", "-o", "1x=2"], "KEY=VALUE"),
        (["examples/scenarios.py", "-o", "unknown=1"], "unexpected keyword argument"),
        (["examples/scenarios.py", "--mode", "server", "--transport", "loopback"], "amqp"),
        (["examples/scenarios.py", "--codec", "yaml"], "yaml"),
    ],
)
def test_bad_input_is_one_clear_line_and_a_non_zero_exit(args: list[str], message: str) -> None:
    result = atasks_run(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("taks", "no module named 'taks' (from 'taks'); did you mean 'tasks'?"),
        ("taks.py", "no such file: taks.py; did you mean 'tasks.py'?"),
        ("shop.taks", "no module named 'shop.taks' (from 'shop.taks'); did you mean 'shop.tasks'?"),
        ("shp.tasks", "no module named 'shp.tasks' (from 'shp.tasks'); did you mean 'shop.tasks'?"),
        ("zzz", "no module named 'zzz' (from 'zzz'); not in "),
    ],
)
def test_a_misspelt_target_gets_the_name_it_meant(
    tmp_path: Path, target: str, message: str
) -> None:
    (tmp_path / "tasks.py").write_text("")
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "tasks.py").write_text("")
    result = atasks_run(target, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip() == f"Error: {message}" or (
        target == "zzz" and result.stderr.startswith(f"Error: {message}{tmp_path}")
    ), result.stderr


def test_failing_aiomain_is_one_line_and_traceback_only_with_verbose(tmp_path: Path) -> None:
    script = tmp_path / "failing.py"
    script.write_text("async def aiomain():\n    raise RuntimeError('the main broke')\n")
    quiet = atasks_run(str(script))
    assert quiet.returncode == 1
    assert quiet.stderr.strip().splitlines()[-1] == "Error: RuntimeError: the main broke"
    assert "Traceback" not in quiet.stderr
    verbose = atasks_run(str(script), "-v")
    assert verbose.returncode == 1
    assert "Traceback" in verbose.stderr


def test_import_error_in_a_module_is_reported(tmp_path: Path) -> None:
    script = tmp_path / "broken.py"
    script.write_text("import not_a_real_dependency\n")
    result = atasks_run(str(script))
    assert result.returncode == 1
    assert "cannot import" in result.stderr
    assert "not_a_real_dependency" in result.stderr


def test_an_out_of_range_concurrency_is_one_line() -> None:
    result = atasks_run("examples/scenarios.py", "--concurrency", "70000")
    assert result.returncode == 2
    assert "'70000': must be between 1 and 65535" in result.stderr
    assert "Traceback" not in result.stderr


def test_workers_that_cannot_start_make_the_supervisor_exit_non_zero(
    tmp_path: Path, amqp_url: str
) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('no database configured')\n")
    result = atasks_run(str(broken), "--mode", "server", "--workers", "2", "--url", amqp_url)
    assert result.returncode == 1
    assert "no database configured" in result.stderr.splitlines()[-1]


def test_a_wrong_password_makes_the_supervisor_exit_non_zero(rabbit: RabbitNode) -> None:
    url = f"amqp://guest:wrong@127.0.0.1:{rabbit.port}/"
    result = atasks_run("dev/tests/workload.py", "--mode", "server", "--workers", "2", "--url", url)
    assert result.returncode == 1
    assert "access refused" in result.stderr.splitlines()[-1]


def test_sigterm_after_a_start_up_failure_exits_non_zero(tmp_path: Path, amqp_url: str) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('no database configured')\n")
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "atasks",
            "run",
            str(broken),
            "--mode",
            "server",
            "--workers",
            "5",
            "--url",
            amqp_url,
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert supervisor.stderr is not None
        for line in supervisor.stderr:  # until the first failure is reported
            if "failed at start-up" in line:
                break
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(30) == 1
    finally:
        supervisor.kill()
        supervisor.wait()
        supervisor.stderr.close()
