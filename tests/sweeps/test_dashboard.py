"""`kdsweep dashboard`: optuna-dashboard and TensorBoard really serve the sweep on 127.0.0.1, and the
printed instructions say how to reach them from another machine."""

import getpass
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import optuna

from kdsweep.sweeps.dashboard import instructions
from kdsweep.sweeps.layout import SweepDir, SweepMeta
from kdsweep.sweeps.study import open_study

RUN = "search/demo-s_both_0_9f2c1e07"  # a TensorBoard run as a sweep names it (a search trial)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep(tmp_path, **meta) -> SweepDir:
    """A sweep folder with one Optuna study holding one trial, and that trial's TensorBoard run."""
    from torch.utils.tensorboard import SummaryWriter

    sd = SweepDir(tmp_path / "mysweep")
    sd.root.mkdir()
    sd.write_meta(SweepMeta(name="mysweep", **meta))
    study = open_study(sd.storage_url(create=True), "mysweep", "demo-s/both")
    study.add_trial(optuna.trial.create_trial(value=19.5, params={"lr": 1e-3},
                                              distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}))
    with SummaryWriter(str(sd.tensorboard / RUN)) as writer:
        for step, ppl in ((5, 22.0), (10, 19.5)):
            writer.add_scalar("val_ppl", ppl, global_step=step)
    return sd


def _get_json(url: str, ready=lambda body: True):
    """GET url until it answers JSON that `ready` accepts (servers take a few seconds to start)."""
    for _ in range(120):
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                body = json.loads(r.read())
            if ready(body):
                return body
        except OSError:
            pass
        time.sleep(0.5)
    return None


def test_dashboard_serves_optuna_and_tensorboard(tmp_path):
    _sweep(tmp_path, ray_address="10.1.2.3:6379")  # the sweep ran on a Ray cluster
    port, tb_port = _free_port(), _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kdsweep", "dashboard", "mysweep", "--storage", str(tmp_path),
                             "--port", str(port), "--tensorboard", "--tensorboard-port", str(tb_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        body = _get_json(f"http://127.0.0.1:{port}/api/studies")
        assert body is not None, "optuna-dashboard did not answer"
        assert [s["study_name"] for s in body["study_summaries"]] == ["mysweep:demo-s/both"]
        runs = _get_json(f"http://127.0.0.1:{tb_port}/data/runs", ready=lambda runs: RUN in runs)
        assert runs == [RUN], "TensorBoard did not serve the sweep's run"
        query = urllib.parse.urlencode({"run": RUN, "tag": "val_ppl"})
        points = _get_json(f"http://127.0.0.1:{tb_port}/data/plugin/scalars/scalars?{query}")
        assert [(step, value) for _, step, value in points] == [(5, 22.0), (10, 19.5)]
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}" in out and f"http://127.0.0.1:{tb_port}" in out and "auth_token" in out
    forward = f"ssh -N -L {port}:127.0.0.1:{port} -L {tb_port}:127.0.0.1:{tb_port} {getpass.getuser()}@10.1.2.3"
    assert forward in out, out
    assert "GET /api/studies" not in out and "HTTP/1.1" not in out, out  # quiet: no access log without --verbose


def test_instructions_without_tensorboard_or_a_recorded_cluster(tmp_path):
    sd = _sweep(tmp_path)
    text = instructions(sd, 8080, None)
    assert f"tensorboard --logdir {sd.tensorboard} --host 127.0.0.1" in text
    [forward] = [line for line in text.splitlines() if "ssh -N" in line]
    assert "ssh -N -L 8080:127.0.0.1:8080 user@head" in forward and "6006" not in forward
    assert "Ray dashboard" not in text and "auth_token" not in text  # a local sweep had no Ray dashboard
