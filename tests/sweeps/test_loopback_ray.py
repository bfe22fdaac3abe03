"""The embedded local Ray of a sweep listens on loopback only (sweeps/localray.py).

A real `kdsweep sweep run` subprocess with its own embedded Ray: once a trial is training, every
process of that Ray (all processes whose environment names the test's RAY_TMPDIR: the driver,
GCS, raylet, dashboard and runtime-env agents, the trial's worker) is asked by psutil for its
listening sockets. Before the fix they listened on `::`, `0.0.0.0` and the machine's address.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from kdsweep.distill.run.rundir import eval_rows
from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.localray import is_loopback
from tests.fixtures import SMALL_SPACE, ray_subprocess_env, write_small_space

pytestmark = pytest.mark.ray


def test_is_loopback_reads_every_form_of_loopback():
    assert all(map(is_loopback, ["127.0.0.1", "127.3.4.5", "::1", "::ffff:127.0.0.1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.0.2.2", "::ffff:10.0.0.1", "fe80::1%eth0"]))


def _listening(ray_tmp: str) -> tuple[list[tuple[str, str, int]], dict[str, str | None]]:
    """(process name, ip, port) of every listening inet socket of the processes under this RAY_TMPDIR,
    and each such process's RAY_AUTH_MODE by name."""
    found, auth = [], {}
    for p in psutil.process_iter(["pid", "name"]):
        try:
            environ = p.environ()
            if environ.get("RAY_TMPDIR") != ray_tmp:
                continue
            auth[p.info["name"]] = environ.get("RAY_AUTH_MODE")
            found += [(p.info["name"], c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found, auth


def test_a_local_sweep_listens_on_loopback_only(tmp_path, char_teacher, small_fasta):
    space = write_small_space(tmp_path, "loop", small_fasta, char_teacher, arms=["baseline"],
                              params={k: v for k, v in SMALL_SPACE["params"].items() if k != "smoothing"},
                              train={"max_steps": 400, "eval_interval": 4},
                              search={"trials_per_study": 1, "max_concurrent": 1, "early_stopping": False})
    store = tmp_path / "store"
    with ray_subprocess_env() as env:
        env.pop("RAY_AUTH_MODE", None)  # as a user's shell has it (an in-process Ray of this pytest may set it)
        driver = subprocess.Popen([sys.executable, "-m", "kdsweep", "sweep", "run", str(space), "--storage",
                                   str(store)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, start_new_session=True)
        try:
            sd = SweepDir(store / "loop")
            deadline = time.time() + 300
            while not (sd.runs.is_dir() and any(eval_rows(r) for r in sd.runs.iterdir())):
                assert driver.poll() is None, driver.stdout.read()[-3000:]
                assert time.time() < deadline, "no trial reported within 300 s"
                time.sleep(0.2)
            sockets, auth = _listening(env["RAY_TMPDIR"])
        finally:
            os.killpg(driver.pid, signal.SIGINT)
            driver.communicate(timeout=120)
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets  # the check saw Ray's servers, not an empty list
    assert any(name.startswith("ray::") for name in names), sockets  # and its agents / the trial's worker
    exposed = [s for s in sockets if not is_loopback(s[1])]
    assert exposed == [], exposed
    # Token auth on, though kdsweep leaves RAY_AUTH_MODE to Ray (sweeps/environment.py): a new Ray's default.
    assert auth["gcs_server"] == auth["raylet"] == "token", auth
