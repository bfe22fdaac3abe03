"""`kdsweep dashboard`: optuna-dashboard really serves the sweep's studies on 127.0.0.1."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import optuna

from sweeps.layout import SweepDir
from sweeps.study import open_study


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_the_sweep_storage(tmp_path):
    sd = SweepDir(tmp_path / "mysweep")
    sd.root.mkdir()
    sd.write_meta({"name": "mysweep", "storage_url": None})
    url = sd.storage_url(create=True)
    study = open_study(url, "mysweep", "demo-s/both")
    study.add_trial(optuna.trial.create_trial(value=19.5, params={"lr": 1e-3},
                                              distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}))
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kdsweep", "dashboard", "mysweep", "--storage", str(tmp_path),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        body = None
        for _ in range(60):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    body = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.5)
        assert body is not None, "optuna-dashboard did not answer"
        names = [s["study_name"] for s in body["study_summaries"]]
        assert names == ["mysweep:demo-s/both"]
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}" in out and "tensorboard --logdir" in out and "auth_token" in out
