"""A full disk, for real: a small tmpfs in a private mount namespace (tests.fixtures.on_small_disk).

* `kdsweep train` with 0 bytes free: it used to leave a 0-byte config.yaml, and the "run the same
  command again" it advised then crashed reading it;
* `kdsweep cache build` whose cache does not fit: it used to die of SIGBUS (exit 135, no message,
  a 147 MB sparse temp file left) writing through memory maps;
* `reserve` (posix_fallocate) turning a mapped file that cannot fit into an OSError.
The mid-run case (checkpoints filling the disk) is tests/kdsweep/test_train_faults.py.
"""

from __future__ import annotations

import json
import sys

import yaml

from tests.fixtures import on_small_disk

TINY = ["--set", "scale=null", "--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16", "--set", "block_size=64",
        "--set", "batch_size=4", "--set", "micro_batch_size=2", "--set", "eval_interval=2", "--set", "max_steps=2",
        "--set", "val_max_proteins=8", "--set", "final_eval=false", "--set", "split_method=hash"]


def _outcome(tmp_path, name: str) -> tuple[str, str]:
    return (tmp_path / f"{name}.rc").read_text().strip(), (tmp_path / f"{name}.err").read_text()


def _run(tmp_path, name: str, args: list[str]) -> str:
    """A shell line running `python -m kdsweep ARGS`, its exit status and stderr kept under `name`."""
    cmd = " ".join([sys.executable, "-m", "kdsweep", *args])
    return f"{cmd} > {tmp_path}/{name}.out 2> {tmp_path}/{name}.err; echo $? > {tmp_path}/{name}.rc"


def test_train_on_a_disk_with_no_space_writes_nothing_and_the_rerun_works(tmp_path, char_teacher, small_fasta):
    args = ["train", "--set", f"teacher={char_teacher}", "--set", f"data={small_fasta}", *TINY, "--out", "$DISK/run"]
    on_small_disk(tmp_path, f"""
dd if=/dev/zero of=$DISK/fill bs=4k 2>/dev/null       # every block taken
{_run(tmp_path, "full", args)}
find $DISK -path $DISK/fill -prune -o -type f -print > {tmp_path}/files
rm $DISK/fill                                          # space freed
{_run(tmp_path, "again", args)}
""", size="1m")
    rc, err = _outcome(tmp_path, "full")
    assert rc == "1", err
    assert err.strip().splitlines()[-1].startswith(f"kdsweep: error: no space left on the device writing "
                                                   f"{tmp_path}/disk/run/config.yaml; nothing was left half-written")
    assert "Traceback" not in err
    assert (tmp_path / "files").read_text() == ""  # no config.yaml (of 0 bytes or any), no temp file
    rc, err = _outcome(tmp_path, "again")
    assert rc == "0", err


def test_a_cache_build_that_does_not_fit_says_so_and_leaves_nothing(tmp_path, char_teacher, small_fasta):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "name": "full", "teacher": str(char_teacher), "data": str(small_fasta), "scales": ["demo-xs"],
        "arms": ["baseline"], "train": {"split_method": "hash", "block_size": 64, "max_steps": 8, "final_eval": False},
        "params": {"lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2},
                   "warmup_steps": {"type": "int", "low": 0, "high": 2},
                   "temperature": {"type": "uniform", "low": 1.0, "high": 2.0},
                   "alpha": {"type": "uniform", "low": 0.1, "high": 0.9}}}))
    on_small_disk(tmp_path, f"""
{_run(tmp_path, "build", ["cache", "build", str(space), "--storage", "$DISK/store"])}
find $DISK -type f > {tmp_path}/files
""", size="1m")
    rc, err = _outcome(tmp_path, "build")
    assert rc == "1", err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"kdsweep: error: no space left on the device of {tmp_path}/disk/store/teacher_cache/")
    assert "the teacher cache" in last and " MB free; free space" in last
    assert "Traceback" not in err
    assert (tmp_path / "files").read_text() == ""  # no partial folder, no temp file


def test_reserve_turns_a_file_that_cannot_fit_into_an_oserror(tmp_path):
    script = """
import json, os
from kdsweep.distill.files.diskfull import DiskFull, reserve
path = os.path.join(os.environ["DISK"], "x.npy")
fd = os.open(path, os.O_CREAT | os.O_RDWR)
try:
    reserve(fd, 64 << 20, path)
    out = "reserved"
except DiskFull as e:
    out = str(e)
print(json.dumps(out))
"""
    p = on_small_disk(tmp_path, f"cd {sys.path[0] or '.'}; export DISK; {sys.executable} -c '{script}'", size="1m")
    assert json.loads(p.stdout.strip().splitlines()[-1]).startswith("no space left on the device of "), p.stderr
