"""Ends the Ray processes an embedded-Ray driver started, once that driver dies without
shutting Ray down (SIGKILL, the OOM killer, a lost SSH session).

Ray's own cleanup relies on each process noticing that its parent is gone; under load its
dashboard and runtime-env agents were measured still running 60 s after a driver SIGKILL
(tests/sweeps/test_postgres_ray.py). `watch(pid)` runs in a process of its own session (a
signal to the driver's process group spares it), samples the driver's descendants every
second, and once the driver is gone kills those it saw that still run (psutil checks the
start time, so a reused pid is never hit), then exits. When the driver shuts Ray down
itself nothing is left to kill.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil


def start_reaper() -> None:
    """Watch this process (call it right after starting an embedded Ray)."""
    subprocess.Popen([sys.executable, "-m", "kdsweep.sweeps.reaper", str(os.getpid())], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def watch(driver_pid: int, period_s: float = 1.0) -> None:
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return
    seen: dict[int, psutil.Process] = {}
    while _alive(driver):
        try:
            seen.update((p.pid, p) for p in driver.children(recursive=True) if p.pid != os.getpid())
        except psutil.Error:
            break
        time.sleep(period_s)
    for p in seen.values():
        if _alive(p):
            try:
                p.kill()
            except psutil.Error:
                pass


if __name__ == "__main__":
    watch(int(sys.argv[1]))
