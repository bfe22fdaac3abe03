"""`kdsweep dashboard NAME`: watch a sweep live.

* optuna-dashboard on the sweep's Optuna storage, bound to 127.0.0.1 (served here);
* TensorBoard on the Tune experiment folder (Tune writes event files per trial);
* the Ray dashboard of a cluster: token auth is on by default in Ray >= 2.59, so
  the page needs the token from `~/.ray/auth_token` (never turn auth off).
"""

from __future__ import annotations

import socket

from distill.errors import ConfigError
from sweeps.layout import SweepDir

HOST = "127.0.0.1"


def instructions(sd: SweepDir, port: int) -> str:
    return "\n".join([
        f"optuna-dashboard: http://{HOST}:{port}   (studies '{sd.name}:<scale>/<arm>', storage {sd.storage_url()})",
        f"TensorBoard:      tensorboard --logdir {sd.tune} --host {HOST}   then open http://{HOST}:6006",
        "Ray dashboard (cluster): `ray dashboard cluster.yaml` forwards it to http://127.0.0.1:8265;",
        "                 API calls need: -H \"Authorization: Bearer $(cat ~/.ray/auth_token)\" (token auth stays on)",
    ])


def check_port_free(port: int) -> None:
    """A busy port is one clear line, not a traceback from deep inside the web server."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError as e:
            raise ConfigError(f"--port {port}: {HOST}:{port} is not free ({e.strerror}); is a dashboard "
                              "already running? pick another port with --port") from None


def serve_dashboard(sd: SweepDir, *, port: int = 8080, print_only: bool = False) -> int:
    if not print_only:
        check_port_free(port)
    print(instructions(sd, port), flush=True)
    if print_only:
        return 0
    from optuna_dashboard import run_server

    run_server(sd.storage_url(), host=HOST, port=port)  # blocks until Ctrl-C
    return 0
