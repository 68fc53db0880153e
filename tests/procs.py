"""Subprocesses the tests start, bounded: a command that overruns its timeout is killed with its whole process group
(the sweep's local Ray, its trial workers, everything it started), so a hung test leaves nothing running behind it;
and a Ray process is killed only while it is still one (a pid read from a progress file may be recycled).

    done = run_bounded([sys.executable, "-m", "lora_tune.sweep", ...], timeout=600, cwd=REPO)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any


def run_bounded(cmd: list[str] | str, *, timeout: float, capture_output: bool = True, text: bool = True,
                check: bool = False, **kwargs: Any) -> subprocess.CompletedProcess:
    """subprocess.run in a new session; on timeout the session's whole process group is killed (SIGKILL) and
    subprocess.TimeoutExpired is raised with what the command printed so far."""
    if capture_output:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
    with subprocess.Popen(cmd, start_new_session=True, text=text, **kwargs) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            stdout, stderr = proc.communicate()
            raise subprocess.TimeoutExpired(cmd, timeout, output=stdout, stderr=stderr) from None
        except BaseException:  # a pytest-timeout or Ctrl-C in the test: nothing it started outlives it
            kill_group(proc)
            raise
    done = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    if check:
        done.check_returncode()
    return done


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group `proc` leads (started with start_new_session=True)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def kill_ray_actor(pid: int, title: str = "ray::") -> bool:
    """SIGKILL `pid` only if it is still a Ray actor at work, its process titled `title...` (Ray titles an actor's
    process `ray::<class>.<method>`, e.g. `ray::ResourceTrainable.train`; an idle worker `ray::IDLE`); whether it
    was killed. The title is read from /proc and the kill goes through the same psutil handle, which refuses a
    pid recycled since (psutil compares the process's start time), so nobody else's process is hit."""
    import psutil

    try:
        process = psutil.Process(pid)
        name = process.cmdline()[0]
        if not name.startswith(title) or name.startswith("ray::IDLE"):
            return False
        process.kill()
    except (psutil.Error, IndexError):
        return False
    return True
