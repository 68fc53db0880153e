"""tests/procs.py: a test's subprocess that overruns its timeout is killed with everything it started; a Ray
actor is killed only while its process is still one."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.procs import kill_ray_actor, run_bounded

REPO = Path(__file__).resolve().parents[1]


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, killed and not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_command_that_overruns_is_killed_with_its_whole_process_group() -> None:
    script = "sleep 300 & echo $!; wait"  # the shell's child outlives a kill of the shell alone
    with pytest.raises(subprocess.TimeoutExpired) as raised:
        run_bounded(["bash", "-c", script], timeout=2)
    grandchild = int(raised.value.output.split()[0])
    deadline = time.monotonic() + 10
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(grandchild)


def test_a_command_within_its_timeout_returns_like_subprocess_run() -> None:
    done = run_bounded(["bash", "-c", "echo out; echo err >&2; exit 3"], timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    with pytest.raises(subprocess.CalledProcessError):
        run_bounded(["false"], timeout=30, check=True)


def test_a_test_that_overruns_the_suites_timeout_fails_and_the_next_one_still_runs(tmp_path: Path) -> None:
    """pyproject's `timeout` (pytest-timeout): a hung test fails with its stack printed; the run goes on."""
    (tmp_path / "test_hang.py").write_text("import time\n\ndef test_hangs():\n    time.sleep(60)\n\n"
                                           "def test_after():\n    pass\n")
    done = run_bounded([sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path),
                        "-o", "timeout=2", "-p", "no:cacheprovider", str(tmp_path / "test_hang.py")], timeout=120)
    assert done.returncode == 1, done.stdout[-2000:]
    assert "Timeout" in done.stdout and "1 failed, 1 passed" in done.stdout, done.stdout[-2000:]


def titled(title: str) -> subprocess.Popen:
    """A process whose title (argv[0], what /proc shows) is `title`, as Ray titles its workers."""
    proc = subprocess.Popen(["bash", "-c", f'exec -a "{title}" sleep 60'])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{proc.pid}/cmdline") as cmdline:
            if cmdline.read().startswith(title):
                return proc
        time.sleep(0.05)
    raise AssertionError(f"{title} never showed in /proc")


def test_only_a_process_still_titled_as_a_working_ray_actor_is_killed() -> None:
    actor, idle, other = titled("ray::ResourceTrainable.train"), titled("ray::IDLE"), titled("python")
    try:
        assert not kill_ray_actor(other.pid) and not kill_ray_actor(idle.pid)  # not (or no longer) an actor at work
        assert not kill_ray_actor(actor.pid, title="ray::RayTrainWorker")  # another kind of actor
        assert alive(other.pid) and alive(idle.pid) and alive(actor.pid)
        assert kill_ray_actor(actor.pid) and actor.wait(timeout=10) == -9
        assert not kill_ray_actor(actor.pid)  # gone: nothing to kill
    finally:
        for proc in (actor, idle, other):
            proc.kill()
            proc.wait()
