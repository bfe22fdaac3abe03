"""Every node sees the sweep's storage: checked on every node before the first trial, and again by
every trial on its own node (a node that joined later included).

A cluster sweep rests on one assumption: every node mounts `--storage` (the sweep folders) and the
teacher cache at the same paths. A node whose mount failed has an empty local folder there
instead; trials on it would write run folders, checkpoints and summaries to its local disk, read
no cache, and a trial moved off a lost node would "resume" from a checkpoint that is not there.

So the driver writes a sentinel file holding a fresh random token into each shared folder
(`plant`), then reads them back on every alive node with one small Ray task pinned to that node
(`check_every_node`): a node that sees no sentinel, another token, or cannot write there is named
in a one-line refusal before any trial starts. Each trial repeats the read on its node as its
first action (`check_this_node`, a few small reads); on a node that fails it, the trial raises
`StorageNotShared` and `StorageGuard` stops the whole sweep with that message (`sweep resume`
continues it once the mount is fixed): placing work elsewhere would leave a node in the cluster
that silently loses whatever lands on it later.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ray
from ray.tune import Callback, Stopper
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from kdsweep.distill.errors import ConfigError, KDSweepError
from kdsweep.distill.files.atomic import write_atomic

SENTINEL_PREFIX = ".kdsweep-node-check-"
ANSWER_TIMEOUT_S = 120.0
HINT = ("every node must mount the sweep storage (--storage) and the teacher cache at the same paths "
        "(cluster.yaml mounts EFS at ~/efs on every node)")


class StorageNotShared(KDSweepError):
    """This node does not see the storage the driver wrote: raised in a trial, it stops the sweep."""


@dataclass(frozen=True)
class StorageCheck:
    """A token and the folders every node must see it in (absolute paths)."""

    token: str
    folders: tuple[str, ...]

    def sentinel(self, folder: str) -> Path:
        return Path(folder) / f"{SENTINEL_PREFIX}{self.token}"


def plant(folders: list[Path]) -> StorageCheck:
    """Write a new token into a sentinel file in each folder (created if absent)."""
    check = StorageCheck(secrets.token_hex(8), tuple(str(Path(f).resolve()) for f in dict.fromkeys(folders)))
    for folder in check.folders:
        Path(folder).mkdir(parents=True, exist_ok=True)
        write_atomic(check.sentinel(folder), check.token)
    return check


def remove(check: StorageCheck) -> None:
    for folder in check.folders:
        check.sentinel(folder).unlink(missing_ok=True)


def this_node() -> str:
    """How a node is named in messages: its IP, host name and Ray node id (short)."""
    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "?"
    return f"{ray.util.get_node_ip_address()} ({socket.gethostname()}, node {node_id[:12]})"


def look(check: StorageCheck) -> list[str]:
    """What this process sees wrong in each shared folder: [] when every sentinel reads back."""
    problems = []
    for folder in check.folders:
        path = check.sentinel(folder)
        try:
            seen = path.read_text()
        except FileNotFoundError:
            problems.append(f"{folder} has no {path.name} (another file system is mounted there, or none)")
            continue
        except OSError as e:
            problems.append(f"cannot read {path}: {e.strerror or e}")
            continue
        if seen != check.token:
            problems.append(f"{path} holds {seen[:32]!r}, not the driver's {check.token!r}")
            continue
        probe = Path(folder) / f"{SENTINEL_PREFIX}{check.token}.{socket.gethostname()}.{os.getpid()}"
        try:
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            problems.append(f"cannot write in {folder}: {e.strerror or e}")
    return problems


def _look_remote(check: StorageCheck) -> tuple[str, list[str]]:
    return this_node(), look(check)


def check_every_node(check: StorageCheck, log: Callable[[str], None]) -> None:
    """One task per alive node (pinned by node affinity, 0 CPUs so a busy node still runs it);
    a ConfigError naming each node that does not see every sentinel. Ray must be initialised."""
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    if nodes == [ray.get_runtime_context().get_node_id()]:  # one node, the driver's: read it here
        answers = {nodes[0]: (this_node(), look(check))}
    else:
        task = ray.remote(num_cpus=0)(_look_remote)
        refs = {task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(check): n
                for n in nodes}
        ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=ANSWER_TIMEOUT_S)
        answers = {refs[r]: ray.get(r) for r in ready}
        answers |= {refs[r]: (f"node {refs[r][:12]}", [f"did not answer within {ANSWER_TIMEOUT_S:g} s"]) for r in late}
    bad = [f"{name}: {'; '.join(problems)}" for name, problems in answers.values() if problems]
    if bad:
        raise ConfigError(f"storage is not shared by every node: {' | '.join(bad)}; {HINT}")
    if len(nodes) > 1:  # an embedded local Ray is one node: nothing worth a console line
        log(f"storage: {len(nodes)} nodes see {', '.join(check.folders)}")


def check_this_node(check: StorageCheck | None) -> None:
    """A trial's first action: StorageNotShared naming this node when it does not see the storage."""
    if check is None:
        return
    if problems := look(check):
        raise StorageNotShared(f"storage is not shared by node {this_node()}: {'; '.join(problems)}; {HINT}")


REFUSAL_FILE = "storage-refused.txt"


def refusal_in(error: BaseException | None) -> str | None:
    """The StorageNotShared message inside a trial's error, if any: by type along Ray's wrappers
    (a RayTaskError's `cause`; its own str is a header and the remote traceback), else by its words
    (Ray Train reports a worker's error as text)."""
    text = str(error or "")
    while error is not None:
        cause = getattr(error, "cause", None)
        if isinstance(error, StorageNotShared) and not isinstance(cause, StorageNotShared):
            return str(error)
        error = cause or error.__cause__
    lines = [line.strip() for line in text.splitlines() if "storage is not shared by node" in line]
    return lines[-1].split(f"{StorageNotShared.__name__}: ")[-1] if lines else None


class StorageGuard(Callback, Stopper):
    """Stops the sweep at the first trial that failed `check_this_node`, leaving its message in
    `<sweep>/storage-refused.txt` for the driver (`raise_if_refused`). A file, not an attribute:
    a resumed Tune experiment runs the callbacks it pickled, not this driver's objects."""

    def __init__(self, sweep_root: str):
        self.sweep_root = sweep_root
        self.stop = False

    def _seen(self, trial) -> None:
        message = refusal_in(trial.get_pickled_error())
        if message is not None:
            self.stop = True
            try:
                (Path(self.sweep_root) / REFUSAL_FILE).write_text(message)
            except OSError:
                pass  # a sweep folder moved since Tune pickled this guard: the sweep still stops

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._seen(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._seen(trial)

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.stop


def raise_if_refused(sweep_root: Path) -> None:
    """After Tune returns: the StorageGuard's message as a ConfigError (exit 2), file removed."""
    path = Path(sweep_root) / REFUSAL_FILE
    if path.is_file():
        message = path.read_text()
        path.unlink()
        raise ConfigError(message)
