"""The embedded local Ray of a sweep run without `--address`: every socket on 127.0.0.1.

A local sweep needs no network, yet a plain `ray.init()` on Linux makes the machine's address
its node IP, and Ray's GCS, raylet, workers and dashboard/runtime-env agents then listen on
all interfaces or on that address (measured with psutil on Ray 2.60: `::`, `0.0.0.0` and the
host's IP). `ray.init(_node_ip_address="127.0.0.1")` does not help: Ray turns a loopback node
IP back into the machine's address (`services.resolve_ip_for_localhost`) unless clusters are
off, which is Ray's own default on macOS and Windows (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`,
read once at import into `ray_constants.ENABLE_RAY_CLUSTER`). `init_loopback_ray` switches
that flag off for the one `ray.init` that starts the embedded Ray: the node IP is then
127.0.0.1, every Ray server binds there (the agents choose loopback for a loopback node IP),
and the dashboard, when Ray starts one, stays on 127.0.0.1. Joining a cluster (`--address`)
never comes here. tests/sweeps/test_loopback_ray.py checks every listening socket of a
running sweep's processes.
"""

from __future__ import annotations

import ipaddress
import logging

import ray

LOOPBACK = "127.0.0.1"


def init_loopback_ray(**kwargs) -> None:
    """`ray.init(**kwargs)` starting a new single-node Ray bound to 127.0.0.1."""
    from ray._private import ray_constants  # Ray has no public switch for this (module docstring)

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    # With RAY_AUTH_MODE unset a new Ray turns token auth on and logs advice on how to turn it off
    # (sweeps/environment.py: kdsweep leaves the mode to Ray); auth stays on, the advice stays off.
    auth_notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    saved_level = auth_notice.level
    auth_notice.setLevel(logging.ERROR)
    try:
        ray.init(dashboard_host=LOOPBACK, **kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        auth_notice.setLevel(saved_level)
    node_ip = ray.util.get_node_ip_address()
    if not is_loopback(node_ip):  # a Ray that changed how it picks the node IP: refuse to run exposed
        ray.shutdown()
        raise RuntimeError(f"the embedded Ray chose node IP {node_ip}, not {LOOPBACK}")


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped IPv6 loopback (`::ffff:127.0.0.1`, how a dual-stack
    socket bound to 127.0.0.1 shows)."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback
