"""`kdsweep dashboard NAME`: watch a sweep live.

* optuna-dashboard on the sweep's Optuna storage, bound to 127.0.0.1 (served here);
* with `--tensorboard`, TensorBoard on the sweep's `tensorboard/` runs beside it, also on
  127.0.0.1 (one run per trial, `<scale>_<arm>_<n>_<trial id>`: filter by scale or arm);
* the SSH port-forward line that opens both from another machine: to the head of the
  Ray cluster the sweep joined (`ray_address` in sweep.json), else a generic `user@head`;
* for a sweep that joined a Ray cluster, its Ray dashboard: on a cluster with token auth (`ray start`
  turns it on where `~/.ray/auth_token` exists; docs/cluster.md) the page needs that token.
  A sweep on an embedded local Ray had no dashboard (kdsweep starts none): no such line.

Quiet by default: the servers' access logs (a line per HTTP request) only with `--verbose`.
"""

from __future__ import annotations

import getpass
import socket

from kdsweep.distill.errors import ConfigError
from kdsweep.sweeps.layout import SweepDir

HOST = "127.0.0.1"
OPTUNA_PORT, TENSORBOARD_PORT = 8080, 6006


def ssh_forward(sd: SweepDir, ports: list[int]) -> str:
    address = sd.meta().ray_address
    forwards = " ".join(f"-L {p}:{HOST}:{p}" for p in ports)
    if not address:
        return f"from another machine: ssh -N {forwards} user@head   (user@head: this machine's login)"
    host = address.rsplit(":", 1)[0]
    if host in (HOST, "localhost"):
        host = socket.gethostname()
    return (f"from your machine:   ssh -N {forwards} {getpass.getuser()}@{host}   "
            f"(the sweep ran on the Ray cluster at {address})")


def instructions(sd: SweepDir, port: int, tensorboard_port: int | None) -> str:
    if tensorboard_port:
        tensorboard = (f"http://{HOST}:{tensorboard_port}   (runs search/<scale>_<arm>_<n>_<trial id> and "
                       f"replicates/..., in {sd.tensorboard})")
    else:
        tensorboard = (f"tensorboard --logdir {sd.tensorboard} --host {HOST}   then open http://{HOST}:6006 "
                       "(or add --tensorboard)")
    lines = [
        f"optuna-dashboard: http://{HOST}:{port}   (studies '{sd.name}:<scale>/<arm>', storage {sd.storage_url()})",
        f"TensorBoard:      {tensorboard}",
        ssh_forward(sd, [port] + ([tensorboard_port] if tensorboard_port else [])),
    ]
    if sd.meta().ray_address:  # only a cluster has a Ray dashboard to open
        lines += ["Ray dashboard (cluster): `ray dashboard cluster.yaml` forwards it to http://127.0.0.1:8265;",
                  "                 with token auth on, API calls need: -H \"Authorization: Bearer "
                  "$(cat ~/.ray/auth_token)\""]
    return "\n".join(lines)


def check_ports(port: int, tensorboard_port: int | None) -> None:
    """Both ports in 1-65535 and not the same one (the second server would fail to bind after the first started)."""
    for flag, value in (("--port", port), ("--tensorboard-port", tensorboard_port)):
        if value is not None and not 1 <= value <= 65535:
            raise ConfigError(f"{flag}: got {value}, allowed: a TCP port from 1 to 65535")
    if tensorboard_port == port:
        raise ConfigError(f"--tensorboard-port {tensorboard_port} is --port too; give the two servers two ports")


def check_port_free(port: int, flag: str = "--port") -> None:
    """A busy port is one clear line, not a traceback from deep inside the web server."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError as e:
            raise ConfigError(f"{flag} {port}: {HOST}:{port} is not free ({e.strerror}); is a dashboard "
                              f"already running? pick another port with {flag}") from None


def start_tensorboard(sd: SweepDir, port: int) -> str:
    """Serve TensorBoard on the sweep's runs from a thread of this process; returns its URL."""
    from tensorboard import program

    sd.tensorboard.mkdir(exist_ok=True)  # a sweep that has not reported yet: TensorBoard shows runs as they come
    tb = program.TensorBoard()
    # load_fast=false: TensorBoard's Python loader (ample for a sweep's runs), without its note on the Rust one
    tb.configure(argv=[None, "--logdir", str(sd.tensorboard), "--host", HOST, "--port", str(port), "--load_fast=false"])
    return tb.launch()


def serve_optuna_dashboard(storage_url: str, port: int, verbose: bool) -> None:
    """optuna-dashboard's WSGI app on HOST:port, until Ctrl-C. Its own `run_server` logs every
    request (Bottle's access log) and a start-up banner; here those show only when `verbose`."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from optuna_dashboard import wsgi

    class Handler(WSGIRequestHandler):
        def log_request(self, code="-", size="-"):
            if verbose:
                super().log_request(code, size)

    with make_server(HOST, port, wsgi(storage_url), handler_class=Handler) as server:
        server.serve_forever()


def serve_dashboard(sd: SweepDir, *, port: int = OPTUNA_PORT, tensorboard_port: int | None = None,
                    print_only: bool = False, verbose: bool = False) -> int:
    if not print_only:
        check_port_free(port)
        if tensorboard_port:
            check_port_free(tensorboard_port, "--tensorboard-port")
    print(instructions(sd, port, tensorboard_port), flush=True)
    if print_only:
        return 0
    if tensorboard_port:
        start_tensorboard(sd, tensorboard_port)
    serve_optuna_dashboard(sd.storage_url(), port, verbose)  # blocks until Ctrl-C
    return 0
