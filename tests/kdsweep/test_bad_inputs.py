"""Bad and edge-case input, as a new user would type it: one table, every case a real command.

Each row: the command line, what the test folder holds first, the exit status, a phrase the
one-line message must contain, and the files that must not exist afterwards (nothing is
half-written; no sweep folder takes the name). Every case must end before any work starts:
the commands run in this process through `kdsweep.cli.main` (a case that started Ray or
trained would show here as a hang or a traceback), except the two that need a real Ray
cluster to be refused by (marked `ray`), which run as `python -m kdsweep` subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from kdsweep.cli import main
from kdsweep.distill.config import dump_config, load_config
from kdsweep.distill.teacher.cache import BuildInterrupted, build_teacher_cache, plan_teacher_cache
from kdsweep.sweeps.cache import cache_train_config, plan_space_cache
from kdsweep.sweeps.space import load_space
from tests.fixtures import ray_subprocess_env, write_finished_sweep

# hash split: these cases are about bad input, not homology, so they need no `mmseqs`
TINY = ["--set", "split_method=hash", "--set", "scale=null", "--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16",
        "--set", "block_size=64", "--set", "batch_size=4", "--set", "micro_batch_size=2",
        "--set", "max_steps=2", "--set", "eval_interval=2", "--set", "val_max_proteins=8"]
TRAIN = ["train", "--set", "teacher={teacher}", "--set", "data={data}", *TINY, "--out", "{tmp}/out"]
RUN = ["sweep", "run", "{tmp}/space.yaml", "--storage", "{tmp}/store"]
CACHE_BUILD = ["cache", "build", "{tmp}/space.yaml", "--storage", "{tmp}/store"]
SWEPT = ["--storage", "{tmp}/swept"]  # a finished sweep named `norays` (tests.fixtures.write_finished_sweep)

# A YAML alias bomb of 9 levels x 9 aliases: ~0.3 KB that expands to 9**9 (387 million) values.
BOMB = "bomb0: &b0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"bomb{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 9)}]\n" for i in range(1, 9))
HUGE = "x" * 200_000  # a value under the 256 KiB file cap that a message must not quote in full

SPACE = {
    "name": "bad", "teacher": "{teacher}", "data": "{data}", "scales": ["demo-xs"], "arms": ["baseline"],
    "params": {"lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2},
               "warmup_steps": {"type": "int", "low": 0, "high": 2},
               "temperature": {"type": "uniform", "low": 1.0, "high": 2.0},
               "alpha": {"type": "uniform", "low": 0.1, "high": 0.9}},
    "train": {"split_method": "hash", "max_steps": 8, "eval_interval": 4, "batch_size": 4, "micro_batch_size": 4, "block_size": 64,
              "val_max_proteins": 8, "final_eval": False},
    "search": {"trials_per_study": 1, "max_concurrent": 1},
}


@dataclass
class Case:
    id: str
    args: list[str]
    phrase: str
    absent: list[str] = field(default_factory=list)  # paths (templates) that must not exist afterwards
    code: int = 2
    files: dict[str, str] = field(default_factory=dict)  # path template -> text written first
    space: dict | None = None  # changes to SPACE (top-level keys; `train`/`search`/`resources` merge)
    setup: str | None = None  # a named setup below
    ray: bool = False  # refused by a real Ray cluster: runs as a subprocess with its own embedded Ray


def train(*extra: str) -> list[str]:
    return [*TRAIN, *extra]


def sets(**kv) -> list[str]:
    return [a for k, v in kv.items() for a in ("--set", f"{k}={v}")]


CASES = [
    # ---- kdsweep train: config values -------------------------------------------------------
    Case("train-unknown-key", train(*sets(learning_rate=1e-3)), "learning_rate: unknown key (did you mean 'lr'?)", ["{tmp}/out"]),
    Case("train-negative-lr", train(*sets(lr=-1e-3)), "lr: got -0.001, allowed: a finite number > 0", ["{tmp}/out"]),
    Case("train-alpha-above-1", train(*sets(alpha=1.5)), "alpha: got 1.5, allowed: 0 <= alpha <= 1", ["{tmp}/out"]),
    Case("train-temperature-inf", train(*sets(temperature=".inf")), "temperature: got inf, allowed: a finite number > 0", ["{tmp}/out"]),
    Case("train-temperature-nan", train(*sets(temperature=".nan")), "temperature: got nan", ["{tmp}/out"]),
    Case("train-weight-decay-inf", train(*sets(weight_decay=".inf")), "weight_decay: got inf", ["{tmp}/out"]),
    Case("train-no-test-split-with-final-eval", train(*sets(split="[0.9,0.1,0.0]")),
         "split: the test fraction is 0 but final_eval is true", ["{tmp}/out"]),
    Case("train-split-not-summing-to-1", train(*sets(split="[0.9,0.2,0.1]")), "summing to 1", ["{tmp}/out"]),
    Case("train-precision-fp8", train(*sets(precision="fp8")), "precision: got 'fp8'", ["{tmp}/out"]),
    Case("train-unknown-scale", train(*sets(scale="huge")), "scale: unknown scale 'huge'", ["{tmp}/out"]),
    Case("train-batch-not-multiple", train(*sets(batch_size=5)), "is not a whole multiple of micro_batch_size", ["{tmp}/out"]),
    Case("train-set-without-equals", train("--set", "lr"), "--set 'lr': expected key=value", ["{tmp}/out"]),
    # ---- kdsweep train: config files --------------------------------------------------------
    Case("train-config-duplicate-key", train("--config", "{tmp}/c.yaml"), "c.yaml: malformed YAML: duplicate key 'lr' (line 3, column 1)", ["{tmp}/out"],
         files={"{tmp}/c.yaml": "lr: 1.0e-3\nalpha: 0.5\nlr: 2.0e-3\n"}),
    Case("train-config-malformed", train("--config", "{tmp}/c.yaml"), "c.yaml: malformed YAML", ["{tmp}/out"],
         files={"{tmp}/c.yaml": "lr: [1, 2\n"}),
    Case("train-config-missing", train("--config", "{tmp}/none.yaml"), "none.yaml: config file not found", ["{tmp}/out"]),
    Case("train-config-a-list", train("--config", "{tmp}/c.yaml"), "expected a mapping of key: value", ["{tmp}/out"],
         files={"{tmp}/c.yaml": "- 1\n- 2\n"}),
    Case("train-config-alias-bomb", train("--config", "{tmp}/c.yaml"),
         "c.yaml: malformed YAML: holds more than 100,000 values once its anchors and aliases are expanded", ["{tmp}/out"],
         files={"{tmp}/c.yaml": BOMB.replace("bomb8:", "provenance:")}),
    Case("train-config-alias-in-itself", train("--config", "{tmp}/c.yaml"), "more than 100,000 values once its anchors and aliases are expanded "
         "(or an alias sits inside its own anchor; anchor at line 1)", ["{tmp}/out"], files={"{tmp}/c.yaml": "provenance: &a {a: *a}\n"}),
    Case("train-set-alias-bomb", train("--set", "provenance={{a: &a [1,1,1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,*a,"
                                       "*a,*a,*a], c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], "
                                       "e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]}}"), "holds more than 100,000 values once its anchors", ["{tmp}/out"]),
    Case("train-config-nested-too-deeply", train("--config", "{tmp}/c.yaml"), "c.yaml: malformed YAML: while increasing flow level; exceeded maximum nesting depth",
         ["{tmp}/out"], files={"{tmp}/c.yaml": "provenance: " + "[" * 50_000 + "]" * 50_000 + "\n"}),
    Case("train-config-not-utf8", train("--config", "{tmp}/c.yaml"),
         "c.yaml: not UTF-8 text: byte 0xe9 at byte offset 23 (line 2)", ["{tmp}/out"],
         files={"{tmp}/c.yaml": b"\xef\xbb\xbflr: 0.001\nalpha: caf\xe9\n"}),
    Case("train-config-too-large", train("--config", "{tmp}/c.yaml"),
         "c.yaml: 2,097,165 bytes; a config file may be at most 262,144 bytes", ["{tmp}/out"],
         files={"{tmp}/c.yaml": "provenance: " + "x" * (2 << 20) + "\n"}),
    Case("train-config-a-fifo", train("--config", "{tmp}/fifo.yaml"), "is not a regular file (a pipe, socket or device)",
         ["{tmp}/out"], setup="fifo"),
    Case("train-config-a-folder", train("--config", "{tmp}"), "is a folder; the config file must be a file", ["{tmp}/out"]),
    Case("train-config-huge-value", train("--config", "{tmp}/c.yaml"), "precision: got 'xxxxxxxx", ["{tmp}/out"],
         files={"{tmp}/c.yaml": f"precision: {HUGE}\n"}),
    Case("train-config-huge-key", train("--config", "{tmp}/c.yaml"), "xxxxxxxx...: unknown key", ["{tmp}/out"],
         files={"{tmp}/c.yaml": f"? {HUGE}\n: 1\n"}),
    Case("train-set-integer-too-long", train("--set", "seed=" + "1" * 5000), "malformed YAML: Exceeds the limit", ["{tmp}/out"]),
    # ---- kdsweep train: data, teacher, tokenizer, sizes ----------------------------------------
    Case("train-data-missing", train(*sets(data="{tmp}/none.fasta")), "none.fasta: data file not found", ["{tmp}/out"]),
    Case("train-data-malformed-fasta", train(*sets(data="{tmp}/m.fasta")), "record 1 does not start with a '>'", ["{tmp}/out"],
         files={"{tmp}/m.fasta": "MKVL\n>a\nMKV\n"}),
    Case("train-data-non-iupac", train(*sets(data="{tmp}/n.fasta")), "contains non-IUPAC characters '1J'", ["{tmp}/out"],
         files={"{tmp}/n.fasta": ">ok\nMKV\n>bad\nMK1VJ\n"}),
    Case("train-data-empty", train(*sets(data="{tmp}/e.fasta")), "empty dataset", ["{tmp}/out"],
         files={"{tmp}/e.fasta": ">a\n\n"}),
    Case("train-teacher-missing", train(*sets(teacher="{tmp}/no-teacher")), "teacher directory not found", ["{tmp}/out"]),
    Case("train-tokenizer-missing", train(*sets(tokenizer="{tmp}/no-tokenizer")), "tokenizer directory not found", ["{tmp}/out"]),
    Case("train-tokenizer-of-another-model", train(*sets(tokenizer="{protgpt2}")), "vocabulary mismatch", ["{tmp}/out"]),
    Case("train-block-size-over-positions", train(*sets(block_size=1024)),
         "block_size: 1024 exceeds the student's n_positions 512", ["{tmp}/out"]),
    Case("train-max-eval-tokens-over-positions", train(*sets(max_eval_tokens=2048)),
         "max_eval_tokens: 2048 exceeds the student's n_positions 512", ["{tmp}/out"]),
    # ---- kdsweep train: where it writes ----------------------------------------------------
    Case("train-out-is-a-file", [*TRAIN[:-1], "{tmp}/afile"], "is a file, not a folder", ["{tmp}/afile/config.yaml"],
         files={"{tmp}/afile": "not a folder\n"}),
    Case("train-out-under-a-file", [*TRAIN[:-1], "{tmp}/afile/run"], "cannot be created: ", ["{tmp}/afile/run"],
         files={"{tmp}/afile": "not a folder\n"}),
    Case("train-out-unwritable", [*TRAIN[:-1], "/sys/kdsweep-test-out"], "is not writable", ["/sys/kdsweep-test-out"]),
    Case("train-rerun-other-lr", train(*sets(lr=2e-3)), "holds a run with a different config: lr (0.001 -> 0.002)",
         ["{tmp}/out/checkpoints", "{tmp}/out/metrics.jsonl"], setup="old_run"),
    Case("train-rerun-other-size", train(*sets(n_embd=32)), "n_embd (16 -> 32)",
         ["{tmp}/out/checkpoints", "{tmp}/out/metrics.jsonl"], setup="old_run"),
    # ---- kdsweep evaluate ---------------------------------------------------------------------
    Case("evaluate-out-is-a-folder", ["evaluate", "--student", "{teacher}", "--teacher", "{teacher}", "--out", "{tmp}"],
         "is a folder; give a file name"),
    Case("evaluate-out-unwritable", ["evaluate", "--student", "{teacher}", "--teacher", "{teacher}",
                                     "--out", "/sys/kdsweep-test.json"], "is not writable", ["/sys/kdsweep-test.json"]),
    Case("evaluate-student-missing", ["evaluate", "--student", "{tmp}/no-student", "--teacher", "{teacher}",
                                      "--out", "{tmp}/m.json"], "no-student", ["{tmp}/m.json"]),
    Case("evaluate-teacher-missing", ["evaluate", "--student", "{teacher}", "--teacher", "{tmp}/no-teacher",
                                      "--out", "{tmp}/m.json"], "teacher directory not found", ["{tmp}/m.json"]),
    Case("evaluate-data-missing", ["evaluate", "--student", "{teacher}", "--teacher", "{teacher}",
                                   "--data", "{tmp}/none.fasta", "--out", "{tmp}/m.json"], "data file not found", ["{tmp}/m.json"]),
    # ---- kdsweep sweep run: the space file -------------------------------------------------------
    Case("sweep-space-missing", ["sweep", "run", "{tmp}/none.yaml", "--storage", "{tmp}/store"],
         "search space file not found", ["{tmp}/store"]),
    Case("sweep-space-duplicate-key", RUN, "duplicate key 'scales'", ["{tmp}/store"],
         files={"{tmp}/space.yaml": "name: bad\nscales: [demo-xs]\nscales: [demo-s]\n"}),
    Case("sweep-space-alias-bomb-in-description", RUN, "space.yaml: malformed YAML: holds more than 100,000 values once "
         "its anchors and aliases are expanded (or an alias sits inside its own anchor; anchor at line 1)", ["{tmp}/store"],
         files={"{tmp}/space.yaml": BOMB.replace("bomb8:", "description:")}),
    Case("sweep-space-not-utf8", RUN, "space.yaml: not UTF-8 text: byte 0xff at byte offset 18 (line 2)", ["{tmp}/store"],
         files={"{tmp}/space.yaml": b"name: bad\nscales: \xff\n"}),
    Case("sweep-space-too-large", RUN, "a search space file may be at most 262,144 bytes", ["{tmp}/store"],
         files={"{tmp}/space.yaml": "description: " + "x" * (50 << 20) + "\n"}),
    Case("sweep-space-a-fifo", ["sweep", "run", "{tmp}/fifo.yaml", "--storage", "{tmp}/store"],
         "fifo.yaml: is not a regular file", ["{tmp}/store"], setup="fifo"),
    Case("sweep-space-huge-value", RUN, "scales[0]: unknown scale 'xxxxxxxx", ["{tmp}/store"], space={"scales": [HUGE]}),
    Case("sweep-space-many-unknown-keys", RUN, "... and 4980 more problems", ["{tmp}/store"],
         space={f"key{i}": i for i in range(5000)}),
    Case("sweep-space-unknown-key", RUN, "learning_rate: unknown key", ["{tmp}/store"], space={"learning_rate": 1}),
    Case("sweep-space-train-no-test-split", RUN, "train.split: the test fraction is 0 but final_eval is true", ["{tmp}/store"],
         space={"train": {"split": [0.9, 0.1, 0.0], "final_eval": True}}),
    Case("sweep-storage-url-not-a-url", RUN, "search.storage_url: 'not-a-url' is not a database URL", ["{tmp}/store"],
         space={"search": {"storage_url": "not-a-url"}}),
    Case("sweep-storage-url-heroku-style", RUN, "'postgres://u@db/kd' is not a database URL", ["{tmp}/store"],
         space={"search": {"storage_url": "postgres://u@db/kd"}}),
    Case("sweep-storage-url-driver-missing", RUN, "needs the Python driver 'psycopg2', which is not installed",
         ["{tmp}/store"], space={"search": {"storage_url": "postgresql+psycopg2://u:secret@db/kd"}}),
    Case("sweep-storage-url-unsupported", RUN, "backend 'oracle' is not supported", ["{tmp}/store"],
         space={"search": {"storage_url": "oracle://u@db/kd"}}),
    Case("sweep-storage-url-sqlite-folder-missing", RUN, "the database's folder /no/such/folder does not exist",
         ["{tmp}/store"], space={"search": {"storage_url": "sqlite:////no/such/folder/optuna.db"}}),
    Case("sweep-storage-url-in-memory", RUN, "an in-memory database is lost", ["{tmp}/store"],
         space={"search": {"storage_url": "sqlite://"}}),
    # ---- kdsweep sweep run: inputs checked by the driver before Ray starts ----------------------------
    Case("sweep-data-missing", RUN, "none.fasta: data file not found", ["{tmp}/store/bad"], space={"data": "{tmp}/none.fasta"}),
    Case("sweep-data-malformed", RUN, "record 1 does not start with a '>'", ["{tmp}/store/bad"],
         space={"data": "{tmp}/m.fasta"}, files={"{tmp}/m.fasta": "MKVL\n>a\nMKV\n"}),
    Case("sweep-teacher-missing", RUN, "teacher directory not found", ["{tmp}/store/bad"], space={"teacher": "{tmp}/no-teacher"}),
    Case("sweep-tokenizer-missing", RUN, "tokenizer directory not found", ["{tmp}/store/bad"],
         space={"tokenizer": "{tmp}/no-tokenizer"}),
    Case("sweep-tokenizer-of-another-model", RUN, "vocabulary mismatch", ["{tmp}/store/bad"], space={"tokenizer": "{protgpt2}"}),
    Case("sweep-block-size-over-positions", RUN, "block_size: 1024 exceeds the teacher's n_positions 512", ["{tmp}/store/bad"],
         space={"train": {"block_size": 1024}}),
    Case("sweep-max-eval-tokens-over-positions", RUN, "max_eval_tokens: 600 exceeds the teacher's n_positions 512",
         ["{tmp}/store/bad"], space={"train": {"max_eval_tokens": 600}}),
    Case("sweep-batch-not-divisible-by-workers", RUN, "is not a multiple of micro_batch_size x workers = 4 x 3",
         ["{tmp}/store/bad"], space={"search": {"executor": "ray_train"}, "resources": {"workers": 3}}),
    Case("sweep-storage-is-a-file", ["sweep", "run", "{tmp}/space.yaml", "--storage", "{tmp}/afile"],
         "--storage: {tmp}/afile is a file, not a folder", ["{tmp}/afile/bad"], files={"{tmp}/afile": "x\n"}),
    Case("sweep-storage-unwritable", ["sweep", "run", "{tmp}/space.yaml", "--storage", "/sys/kdsweep-test-store"],
         "is not writable", ["/sys/kdsweep-test-store"]),
    # ---- sweep names are names: no path escapes --storage (security) ------------------------------
    Case("sweep-name-parent", [*RUN, "--name", "../../../x"], "--name: '../../../x' is not a sweep name",
         ["{tmp}/store/../../../x", "{tmp}/store"]),
    Case("sweep-name-absolute", [*RUN, "--name", "{tmp}/abs"], "is not a sweep name", ["{tmp}/abs", "{tmp}/store"]),
    Case("sweep-name-dot", [*RUN, "--name", "."], "--name: '.' is not a sweep name", ["{tmp}/store"]),
    Case("sweep-name-dotdot", [*RUN, "--name", ".."], "--name: '..' is not a sweep name", ["{tmp}/store", "{tmp}/sweep.json"]),
    Case("sweep-name-nested", [*RUN, "--name", "a/b"], "--name: 'a/b' is not a sweep name", ["{tmp}/store"]),
    Case("sweep-name-empty", [*RUN, "--name", ""], "--name: '' is not a sweep name", ["{tmp}/store"]),
    Case("sweep-name-hidden", [*RUN, "--name", ".x"], "is not a sweep name", ["{tmp}/store"]),
    Case("sweep-space-name-parent", RUN, "name: '../x' is not a sweep name", ["{tmp}/x", "{tmp}/store"],
         space={"name": "../x"}),
    Case("sweep-space-name-absolute", RUN, "is not a sweep name", ["{tmp}/abs", "{tmp}/store"],
         space={"name": "{tmp}/abs"}),
    Case("sweep-space-file-name-not-a-name", ["sweep", "run", "{tmp}/my space.yaml", "--storage", "{tmp}/store"],
         "name (from the file name my space.yaml): 'my space' is not a sweep name", ["{tmp}/store"],
         setup="space_without_name"),
    Case("resume-name-parent", ["sweep", "resume", "../swept/norays", "--storage", "{tmp}/other"],
         "sweep name: '../swept/norays' is not a sweep name", ["{tmp}/other"], setup="swept"),
    Case("status-name-absolute", ["sweep", "status", "{tmp}/swept/norays", *SWEPT], "is not a sweep name", setup="swept"),
    Case("export-name-parent", ["sweep", "export", "../swept/norays", *SWEPT, "--out", "{tmp}/best"],
         "is not a sweep name", ["{tmp}/best"], setup="swept"),
    Case("analyze-name-parent", ["analyze", "..", *SWEPT], "sweep name: '..' is not a sweep name",
         ["{tmp}/analysis"], setup="swept"),
    Case("sweep-name-taken", ["sweep", "run", "{tmp}/space.yaml", "--name", "norays", *SWEPT],
         "sweep 'norays' already exists", ["{tmp}/swept/norays/tune"], setup="swept"),
    # ---- kdsweep sweep run: resources no node can hold (needs a real Ray cluster to ask) -----------
    pytest.param(Case("sweep-64-cpus-per-trial", RUN, "each trial needs 64 CPU, but no node of this Ray cluster has that much; its nodes:",
                      ["{tmp}/store/bad"], space={"resources": {"cpus_per_worker": 64}}, ray=True), marks=pytest.mark.ray),
    pytest.param(Case("sweep-gpu-on-cpu-cluster", RUN, "each trial needs 1 CPU, 1 GPU, but no node of this Ray cluster",
                      ["{tmp}/store/bad"], space={"resources": {"gpus_per_worker": 1}}, ray=True), marks=pytest.mark.ray),
    # ---- the teacher cache: its config, where it goes, a cache of another run -------------------------
    Case("sweep-cache-dtype-int8", RUN, "cache.dtype: got 'int8', allowed: fp32, bf16, fp16", ["{tmp}/store"],
         space={"cache": {"dtype": "int8"}}),
    Case("sweep-cache-dir-unwritable", RUN, "cache.dir: /sys/kdsweep-test-cache is not writable",
         ["{tmp}/store/bad", "/sys/kdsweep-test-cache"], space={"cache": {"dir": "/sys/kdsweep-test-cache"}}),
    Case("cache-build-dtype-int8", CACHE_BUILD, "cache.dtype: got 'int8', allowed: fp32, bf16, fp16", ["{tmp}/store"],
         space={"cache": {"dtype": "int8"}}),
    Case("cache-build-dir-unwritable", CACHE_BUILD, "cache.dir: /sys/kdsweep-test-cache is not writable",
         ["/sys/kdsweep-test-cache"], space={"cache": {"dir": "/sys/kdsweep-test-cache"}}),
    Case("cache-build-another-runs-manifest", CACHE_BUILD, "was built for another run: block_size: cache 32, run 64",
         setup="foreign_cache_in_store"),
    Case("train-cache-of-another-run", train(*sets(teacher_cache="{tmp}/cache")),
         "was built for another run: block_size: cache 32, run 64", ["{tmp}/out"], setup="foreign_cache"),
    Case("train-cache-unfinished", train(*sets(teacher_cache="{tmp}/cache")),
         "{tmp}/cache: no complete teacher cache here (an unfinished build is in {tmp}/cache.partial-",
         ["{tmp}/out"], setup="unfinished_cache"),
    # ---- the other sweep commands ------------------------------------------------------------------
    Case("resume-unknown-sweep", ["sweep", "resume", "nosuch", *SWEPT], "sweep 'nosuch' not found in {tmp}/swept; "
         "sweeps there: norays",
         ["{tmp}/swept/nosuch"], setup="swept"),
    Case("resume-without-tune-experiment", ["sweep", "resume", "norays", *SWEPT], "has no Tune experiment to resume",
         ["{tmp}/swept/norays/tune"], setup="swept"),
    Case("status-moved-without-database", ["sweep", "status", "norays", *SWEPT], "Optuna database",
         ["{tmp}/swept/norays/optuna.db"], setup="swept_without_db"),
    Case("export-out-is-a-file", ["sweep", "export", "norays", *SWEPT, "--out", "{tmp}/afile"],
         "--out: {tmp}/afile is a file, not a folder", ["{tmp}/afile/demo-xs__baseline.yaml"],
         files={"{tmp}/afile": "x\n"}, setup="swept"),
    Case("replicate-zero-seeds", ["sweep", "replicate", "norays", *SWEPT, "--seeds", "0"], "--seeds: got 0",
         ["{tmp}/swept/norays/replicates"], setup="swept"),
    Case("analyze-unknown-sweep", ["analyze", "norays2", *SWEPT], "did you mean 'norays'?", ["{tmp}/swept/norays2"],
         setup="swept"),
    Case("dashboard-port-busy", ["dashboard", "norays", *SWEPT, "--port", "{port}"], "is not free", setup="busy_port"),
    # ---- issue 19: numbers out of range or not numbers ------------------------------------------------
    Case("train-seed-1e20", train(*sets(seed="1e20")), "seed: got 1e+20, allowed: an integer of magnitude <= 2**53", ["{tmp}/out"]),
    Case("train-seed-negative", train(*sets(seed=-1)), "seed: got -1, allowed: 0 <= seed < 2**32", ["{tmp}/out"]),
    Case("train-seed-2-to-the-40", train(*sets(seed=2**40)), "seed: got 1099511627776, allowed: 0 <= seed < 2**32", ["{tmp}/out"]),
    Case("train-grad-clip-inf", train(*sets(grad_clip=".inf")), "grad_clip: got inf, allowed: a finite number > 0", ["{tmp}/out"]),
    Case("train-warmup-nan", train(*sets(warmup_steps=".nan")), "warmup_steps: got nan, allowed: an integer", ["{tmp}/out"]),
    Case("train-max-steps-inf", train(*sets(max_steps=".inf")), "max_steps: got inf, allowed: an integer", ["{tmp}/out"]),
    Case("sweep-int-bound-nan", RUN, "params.warmup_steps: int needs finite numbers low and high (got low=nan", ["{tmp}/store"],
         space={"params": {**SPACE["params"], "warmup_steps": {"type": "int", "low": float("nan"), "high": 2}}}),
    Case("sweep-int-bound-inf", RUN, "params.warmup_steps: int needs finite numbers low and high (got low=0, high=inf)",
         ["{tmp}/store"], space={"params": {**SPACE["params"], "warmup_steps": {"type": "int", "low": 0, "high": float("inf")}}}),
    Case("sweep-uniform-bound-inf", RUN, "params.temperature: uniform needs finite numbers", ["{tmp}/store"],
         space={"params": {**SPACE["params"], "temperature": {"type": "uniform", "low": 1.0, "high": float("inf")}}}),
    Case("sweep-choice-of-lists", RUN, "params.alpha.values: got [0.1], allowed: numbers or strings", ["{tmp}/store"],
         space={"params": {**SPACE["params"], "alpha": {"type": "choice", "values": [[0.1]]}}}),
    Case("sweep-arm-params-a-list", RUN, "arm_params: expected a mapping of name: {{parameter: distribution}}, got [1, 2]",
         ["{tmp}/store"], space={"arm_params": [1, 2]}),
    Case("sweep-scale-params-an-int", RUN, "scale_params: expected a mapping", ["{tmp}/store"], space={"scale_params": 3}),
    Case("sweep-scales-of-lists", RUN, "scales[0]: unknown scale ['demo-xs']", ["{tmp}/store"], space={"scales": [["demo-xs"]]}),
    Case("sweep-tokenizer-a-number", RUN, "tokenizer: expected null (the teacher's) or a string, got 5", ["{tmp}/store"],
         space={"tokenizer": 5}),
    Case("sweep-search-seed-negative", RUN, "search.seed: got -1, allowed: an integer from 0 to 4294967295", ["{tmp}/store"],
         space={"search": {"seed": -1}}),
    Case("sweep-search-seed-2-to-the-40", RUN, "search.seed: got 1099511627776, allowed: an integer from 0 to 4294967295",
         ["{tmp}/store"], space={"search": {"seed": 2**40}}),
    Case("sweep-reduction-factor-nan", RUN, "search.reduction_factor: got nan, allowed: a finite number >= 2", ["{tmp}/store"],
         space={"search": {"reduction_factor": float("nan")}}),
    Case("sweep-reduction-factor-inf", RUN, "search.reduction_factor: got inf, allowed: a finite number >= 2", ["{tmp}/store"],
         space={"search": {"reduction_factor": float("inf")}}),
    Case("sweep-trials-1e12", RUN, "search.trials_per_study: got 1000000000000, allowed: an integer from 1 to 10000",
         ["{tmp}/store"], space={"search": {"trials_per_study": 10**12}}),
    Case("sweep-cpus-nan", RUN, "resources.cpus_per_worker: got nan, allowed: a finite number > 0", ["{tmp}/store"],
         space={"resources": {"cpus_per_worker": float("nan")}}),
    Case("sweep-gpus-nan", RUN, "resources.gpus_per_worker: got nan, allowed: a finite number >= 0", ["{tmp}/store"],
         space={"resources": {"gpus_per_worker": float("nan")}}),
    Case("estimate-trials-1e12", ["estimate", "{tmp}/space.yaml"], "search.trials_per_study: got 1000000000000",
         space={"search": {"trials_per_study": 10**12}}),
    Case("estimate-reduction-factor-nan", ["estimate", "{tmp}/space.yaml"], "search.reduction_factor: got nan",
         space={"search": {"reduction_factor": float("nan")}}),
    Case("dashboard-port-70000", ["dashboard", "norays", *SWEPT, "--port", "70000"],
         "--port: got 70000, allowed: a TCP port from 1 to 65535", setup="swept"),
    Case("dashboard-port-negative", ["dashboard", "norays", *SWEPT, "--port", "-1"], "--port: got -1", setup="swept"),
    Case("dashboard-same-port-twice", ["dashboard", "norays", *SWEPT, "--tensorboard", "--port", "8123",
                                       "--tensorboard-port", "8123"], "--tensorboard-port 8123 is --port too", setup="swept"),
    Case("demo-teacher-steps-zero", ["demo-teacher", "--out", "{tmp}/dt", "--steps", "0"], "--steps: got 0", ["{tmp}/dt"]),
    # ---- issue 19: models and tokenizers ------------------------------------------------------------
    Case("train-model-too-large", train(*sets(n_embd=1048576)), "needs at least", ["{tmp}/out"]),
    Case("sweep-model-too-large", RUN, "the student (n_layer 2, n_head 2, n_embd 1048576", ["{tmp}/store/bad"],
         space={"train": {"n_embd": 1048576}}),
    Case("train-teacher-truncated", train(*sets(teacher="{tmp}/tt")), "model.safetensors: truncated: its header describes",
         ["{tmp}/out"], setup="truncated_teacher"),
    Case("sweep-teacher-truncated", RUN, "model.safetensors: truncated", ["{tmp}/store/bad"],
         space={"teacher": "{tmp}/tt"}, setup="truncated_teacher"),
    Case("sweep-teacher-without-weights", RUN, "holds no weights", ["{tmp}/store/bad"],
         space={"teacher": "{tmp}/tt", "cache": {"enabled": False}}, setup="teacher_without_weights"),
    Case("train-teacher-is-a-file", train(*sets(teacher="{tmp}/afile")), "teacher directory expected: {tmp}/afile is a file",
         ["{tmp}/out"], files={"{tmp}/afile": "x\n"}),
    Case("train-tokenizer-permuted", train(*sets(tokenizer="{tmp}/perm")),
         "vocabulary mismatch: {tmp}/perm and the teacher's own tokenizer", ["{tmp}/out"], setup="permuted_tokenizer"),
    Case("train-tokenizer-missing-O", train(*sets(tokenizer="{tmp}/noO")), "(token 'O': absent in {tmp}/noO",
         ["{tmp}/out"], setup="tokenizer_without_O"),
    Case("sweep-tokenizer-permuted", RUN, "vocabulary mismatch", ["{tmp}/store/bad"], space={"tokenizer": "{tmp}/perm"},
         setup="permuted_tokenizer"),
    Case("evaluate-student-tokenizer-permuted", ["evaluate", "--student", "{tmp}/perm", "--teacher", "{teacher}", "--out",
                                                 "{tmp}/m.json"], "vocabulary mismatch: student tokenizer", ["{tmp}/m.json"],
         setup="permuted_tokenizer"),
    # ---- issue 19: data -------------------------------------------------------------------------------
    Case("train-data-a-fifo", train(*sets(data="{tmp}/fifo.fasta")), "fifo.fasta: not a regular file", ["{tmp}/out"],
         setup="fifo"),
    Case("sweep-data-a-fifo", RUN, "fifo.fasta: not a regular file", ["{tmp}/store"], space={"data": "{tmp}/fifo.fasta"},
         setup="fifo"),
    Case("train-data-not-utf8", train(*sets(data="{tmp}/l.fasta")), "l.fasta: not UTF-8 text: byte 0xe9 at byte offset 4",
         ["{tmp}/out"], files={"{tmp}/l.fasta": b">caf\xe9\nMKV\n"}),
    # ---- issue 19: where kdsweep writes ----------------------------------------------------------------
    Case("train-out-and-set-output-dir", train(*sets(output_dir="{tmp}/a")),
         "--out and --set output_dir=... both name the output folder", ["{tmp}/out", "{tmp}/a"]),
    Case("train-rerun-empty-config", train(), "config.yaml: the run's recorded config cannot be read", ["{tmp}/out/metrics.jsonl"],
         setup="empty_config"),
    Case("demo-teacher-out-unwritable", ["demo-teacher", "--out", "/proc/kdsweep-x"], "--out: /proc/kdsweep-x is not writable"),
    Case("analyze-out-unwritable", ["analyze", "norays", *SWEPT, "--out", "/proc/kdsweep-x"],
         "--out: /proc/kdsweep-x is not writable", setup="swept"),
    Case("analyze-out-is-a-file", ["analyze", "norays", *SWEPT, "--out", "{tmp}/afile"], "--out: {tmp}/afile is a file",
         files={"{tmp}/afile": "x\n"}, setup="swept"),
    Case("export-over-a-folder-named-like-a-config", ["sweep", "export", "norays", *SWEPT, "--out", "{tmp}/best"],
         "demo-xs__baseline.yaml is a folder; give a file name", ["{tmp}/best/other.yaml"], setup="export_blocked"),
    Case("export-out-inside-the-sweep", ["sweep", "export", "norays", *SWEPT, "--out", "{tmp}/swept/norays/best"],
         "--out: {tmp}/swept/norays/best is inside the sweep folder", ["{tmp}/swept/norays/best"], setup="swept"),
    Case("export-students-never-saved", ["sweep", "export", "norays", *SWEPT, "--out", "{tmp}/best", "--students"],
         "demo-xs/baseline: the best search trial t1 (study demo-xs/baseline) has no saved student", ["{tmp}/best"],
         setup="swept"),
    # ---- issue 19: damaged sweep folders --------------------------------------------------------------
    Case("status-empty-optuna-db", ["sweep", "status", "norays", *SWEPT], "optuna.db: the sweep's Optuna database is empty",
         setup="swept_empty_db"),
    Case("status-damaged-optuna-db", ["sweep", "status", "norays", *SWEPT], "the sweep's Optuna database cannot be read",
         setup="swept_damaged_db"),
    Case("status-damaged-sweep-json", ["sweep", "status", "norays", *SWEPT], "sweep.json: damaged sweep record",
         setup="swept_damaged_meta"),
    Case("resume-damaged-sweep-json", ["sweep", "resume", "norays", *SWEPT], "sweep.json: damaged sweep record",
         setup="swept_damaged_meta"),
    Case("resume-empty-tuner", ["sweep", "resume", "norays", *SWEPT], "tuner.pkl: Tune's saved experiment is empty",
         setup="tune_empty_tuner"),
    Case("resume-damaged-tune-snapshot", ["sweep", "resume", "norays", *SWEPT],
         "experiment_state-2026-01-01_00-00-00.json: Tune's experiment snapshot is damaged", setup="tune_damaged_snapshot"),
    Case("resume-damaged-optuna-db", ["sweep", "resume", "norays", *SWEPT], "the sweep's Optuna database cannot be read",
         setup="tune_and_damaged_db"),
]


def _fill(value, ctx: dict):
    if isinstance(value, str):
        return value.format(**ctx)
    if isinstance(value, list):
        return [_fill(v, ctx) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, ctx) for k, v in value.items()}
    return value


def _space(changes: dict) -> dict:
    raw = json.loads(json.dumps(SPACE))
    for k, v in changes.items():
        raw[k] = {**raw.get(k, {}), **v} if k in ("train", "search", "resources") else v
    return raw


@pytest.fixture
def busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


def _copy_teacher(tmp: Path, ctx: dict, name: str) -> Path:
    return Path(shutil.copytree(ctx["teacher"], tmp / name))


def _edit_vocab(folder: Path, change) -> None:
    """Rewrite the WordLevel vocabulary of a tokenizer.json copied from the char teacher."""
    path = folder / "tokenizer.json"
    raw = json.loads(path.read_text())
    change(raw["model"]["vocab"])
    path.write_text(json.dumps(raw))


def _swap_two(vocab: dict) -> None:
    vocab["A"], vocab["C"] = vocab["C"], vocab["A"]


def _damage(path: Path) -> None:
    """Bytes changed throughout a file, its first 100 (SQLite's header page start) kept."""
    data = bytearray(path.read_bytes())
    for i in range(100, len(data), 7):
        data[i] = (data[i] * 31 + 7) % 256
    path.write_bytes(bytes(data))


def _tune_folder(sd, snapshot: str, tuner: bytes = b"not empty") -> None:
    sd.tune.mkdir()
    (sd.tune / "tuner.pkl").write_bytes(tuner)
    (sd.tune / "experiment_state-2026-01-01_00-00-00.json").write_text(snapshot)


SETUPS = {
    "fifo": lambda tmp, ctx: (os.mkfifo(tmp / "fifo.yaml"), os.mkfifo(tmp / "fifo.fasta")),  # a read would block
    "truncated_teacher": lambda tmp, ctx: os.truncate(_copy_teacher(tmp, ctx, "tt") / "model.safetensors",
                                                      (Path(ctx["teacher"]) / "model.safetensors").stat().st_size // 2),
    "teacher_without_weights": lambda tmp, ctx: (_copy_teacher(tmp, ctx, "tt") / "model.safetensors").unlink(),
    "permuted_tokenizer": lambda tmp, ctx: _edit_vocab(_copy_teacher(tmp, ctx, "perm"), _swap_two),
    "tokenizer_without_O": lambda tmp, ctx: _edit_vocab(_copy_teacher(tmp, ctx, "noO"), lambda v: v.pop("O")),
    "empty_config": lambda tmp, ctx: ((tmp / "out").mkdir(), (tmp / "out" / "config.yaml").write_text("")),
}
# Setups of a finished sweep folder (tests.fixtures.write_finished_sweep), given its SweepDir.
SWEPT_SETUPS = {
    "swept": lambda sd: None,
    "busy_port": lambda sd: None,
    "swept_without_db": lambda sd: sd.default_db.unlink(),  # as a folder copied without its database
    "swept_empty_db": lambda sd: sd.default_db.write_bytes(b""),
    "swept_damaged_db": lambda sd: _damage(sd.default_db),
    "swept_damaged_meta": lambda sd: sd.meta_path.write_text('{"name": "norays", "storage'),
    "tune_empty_tuner": lambda sd: _tune_folder(sd, "{}", tuner=b""),
    "tune_damaged_snapshot": lambda sd: _tune_folder(sd, '{"trial_data": [["{\\"trial_id'),
    "tune_and_damaged_db": lambda sd: (_tune_folder(sd, "{}"), _damage(sd.default_db)),
    "export_blocked": lambda sd: (sd.root.parent.parent / "best" / "demo-xs__baseline.yaml").mkdir(parents=True),
}


def _prepare(case: Case, tmp: Path, ctx: dict) -> None:
    for path, text in case.files.items():
        if isinstance(text, bytes):
            Path(_fill(path, ctx)).write_bytes(text)
        else:
            Path(_fill(path, ctx)).write_text(text)
    if case.setup in SETUPS:
        SETUPS[case.setup](tmp, ctx)
    if "{tmp}/space.yaml" not in case.files:
        (tmp / "space.yaml").write_text(yaml.safe_dump(_fill(_space(case.space or {}), ctx)))
    if case.setup == "space_without_name":  # the sweep name falls back to the file's name
        raw = _fill(_space(case.space or {}), ctx)
        del raw["name"]
        (tmp / "my space.yaml").write_text(yaml.safe_dump(raw))
    if case.setup == "old_run":  # a run folder whose config.yaml records the plain TRAIN run (lr 1e-3)
        out = tmp / "out"
        out.mkdir()
        dump_config(_train_config(ctx, f"output_dir={out}"), out / "config.yaml")
    if case.setup in ("foreign_cache", "foreign_cache_in_store", "unfinished_cache"):
        _cache_setup(case.setup, tmp, ctx)
    if case.setup in SWEPT_SETUPS:
        SWEPT_SETUPS[case.setup](write_finished_sweep(tmp / "swept"))


def _train_config(ctx: dict, *extra: str):
    """The config of the plain TRAIN command line, with `extra` key=value pairs."""
    pairs = [a for a, flag in zip(_fill(TRAIN[2:], ctx), _fill(TRAIN[1:], ctx)) if flag == "--set"]
    return load_config(None, [*pairs, *extra])


def _cache_setup(setup: str, tmp: Path, ctx: dict) -> None:
    """A real teacher cache where the case's command looks: built for block_size 32 where the command runs
    64 (in {tmp}/cache, or in the very folder `cache build` would build the space's), or interrupted."""
    cfg = _train_config(ctx, f"output_dir={tmp}/unused")
    if setup == "unfinished_cache":
        with pytest.raises(BuildInterrupted):
            build_teacher_cache(plan_teacher_cache(cfg, "fp32", tmp), progress=False, log=lambda _: None,
                                stop_after_parts=1)
        [partial] = tmp.glob("*.partial-*")
        partial.rename(tmp / f"cache.partial-{partial.name.rpartition('-')[2]}")
        return
    if setup == "foreign_cache":
        target = tmp / "cache"
    else:
        space = load_space(tmp / "space.yaml")
        cfg = cache_train_config(space)
        target = plan_space_cache(space, tmp / "store").path
    foreign = build_teacher_cache(plan_teacher_cache(cfg.replace(block_size=32), "fp32", tmp / "caches"),
                                  progress=False, log=lambda _: None)
    target.parent.mkdir(parents=True, exist_ok=True)
    foreign.rename(target)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_refused_before_any_work(case, tmp_path, char_teacher, small_fasta, protgpt2_tiny_teacher,
                                             busy_port, capsys):
    ctx = {"tmp": str(tmp_path), "teacher": str(char_teacher), "data": str(small_fasta),
           "protgpt2": str(protgpt2_tiny_teacher), "port": busy_port}
    _prepare(case, tmp_path, ctx)
    args = _fill(case.args, ctx)
    if case.ray:
        with ray_subprocess_env() as env:
            p = subprocess.run([sys.executable, "-m", "kdsweep", *args], env=env, capture_output=True, text=True,
                               timeout=240)
        code, err = p.returncode, p.stderr
    else:
        code = main(args)
        err = capsys.readouterr().err
    assert code == case.code, err
    assert _fill(case.phrase, ctx) in err
    # One message (Ray itself may log a line or two first when it starts), no traceback.
    assert "Traceback" not in err
    assert len(err) < 5000, f"a {len(err)}-character message"  # never a value quoted in full
    assert any(line.startswith("kdsweep: error:") for line in err.splitlines()) if case.ray else \
        err.startswith("kdsweep: error:")
    for path in _fill(case.absent, ctx):
        assert not Path(path).exists(), path


def test_the_table_is_large_enough():
    assert len(CASES) >= 40


def test_the_ctrl_c_hint_names_the_sweep_when_name_was_not_given(tmp_path, monkeypatch, capsys, char_teacher,
                                                                 small_fasta):
    """It used to say literally `kdsweep sweep resume NAME`. The Ctrl-C itself is real in
    tests/sweeps/test_faults_ray.py; here it arrives where the sweep would run."""
    from kdsweep.sweeps import runner as sweeps_runner
    from kdsweep.sweeps.textfit import kdsweep_command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweeps_runner, "run_sweep", interrupted)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(_fill(SPACE, {"teacher": str(char_teacher),
                                                                      "data": str(small_fasta)})))
    assert main(["sweep", "run", str(tmp_path / "space.yaml"), "--storage", str(tmp_path / "s")]) == 130
    kdsweep = kdsweep_command()  # runnable as printed: `kdsweep` on PATH, else the venv's script
    assert capsys.readouterr().err.strip() == f"kdsweep: interrupted; continue with: {kdsweep} sweep resume bad " \
                                              f"--storage {tmp_path / 's'}"
