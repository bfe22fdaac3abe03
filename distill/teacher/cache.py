"""An exact teacher cache: the teacher's last hidden states, built once, read by every run (method §4).

A sweep's trials all read the same pool of train blocks (distill/data/block_order.py) and
score the same held-out proteins, and the frozen teacher gives the same outputs every
time. The cache stores, once per key (``CacheKey``), what the teacher's LM head
consumes: its last hidden states, after the final layer norm. A run then applies the
head itself (the fused loss, or F.linear for logits), so its teacher logits are exact up
to the storage dtype; with fp32 storage they equal the live teacher's to float rounding.

Layout of a cache folder (every array a ``.npy`` file, memory-mapped when read):

    manifest.json                  the key, shapes, dtype, sha256 and size of every file
    train-00000.hidden.npy         (S, T, d_t) hidden states of pool blocks 0 .. S-1, storage dtype
    train-00000.entropy.npy        (S, T-1) fp32 teacher entropy at tau = 1 per shifted position
    ...                            one pair per shard of S blocks; the last may be shorter
    head.weight.npy, head.bias.npy (V, d_t) fp32 LM-head weight; (V,) bias if the head has one
    val.hidden.npy, val.offsets.npy  (N, d_t) the val proteins' tokens, flat; (n + 1,) int64 offsets
    test.hidden.npy, test.offsets.npy  the same for the test split (when it is not empty)

bf16 has no numpy dtype: it is stored as uint16 and viewed as torch.bfloat16. A held-out
protein is stored up to the teacher's n_positions tokens; a causal model's hidden state
at position i depends on tokens 0..i only, so any shorter scoring truncation reads a prefix.

Building (``build_teacher_cache``) writes into ``<folder>.partial-<pid>`` one part at a
time (a train shard, the head, a held-out split): each file is written under a temporary
name, renamed, hashed, and the part recorded in ``progress.json``. A re-run adopts a
partial folder whose builder is gone and skips its recorded parts (resumable). Only a
complete build gets its manifest and is renamed to the final name, so an interrupted
build never looks complete. Opening (``TeacherCache.open``) compares the manifest's key
with the run's (an error names each differing field) and every file's size.

Verification happens once per version of a file on a node, not in every trial
(`distill.files.digests`): the build records the digest of each file it wrote (it hashed it as
it wrote it), a sweep verifies the cache once on every node before its trials start
(`TeacherCache.verify`, sweeps/cache.py), and a file whose current version has no such
record (a node that joined later, a file written to since) is hashed the first time a
process maps it, before any of its bytes are used: a damaged file is named then.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from kdsweep.distill.data.batches import HeldOut, ProteinData
from kdsweep.distill.data.block_order import pool_size
from kdsweep.distill.data.splits import SplitSpec
from kdsweep.distill.errors import ConfigError, DataError, ModelError
from kdsweep.distill.files import digests
from kdsweep.distill.files.atomic import put_in_place, write_atomic
from kdsweep.distill.files.diskfull import check_free_space, reserve
from kdsweep.distill.files.numbers import dumps
from kdsweep.distill.inputs import load_run_inputs
from kdsweep.distill.loss.fused import teacher_entropy_from_hidden
from kdsweep.distill.loss.heads import head_inputs, is_linear_head
from kdsweep.distill.models import load_teacher, n_positions
from kdsweep.distill.runtime import Runtime, resolve_runtime
from kdsweep.distill.teacher.fingerprint import teacher_fingerprint

CACHE_FORMAT = 1
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
STORAGE_DTYPES = ("fp32", "bf16", "fp16")
# storage dtype -> (numpy dtype on disk, torch dtype it is read as)
_DTYPES = {"fp32": (np.float32, torch.float32), "bf16": (np.uint16, torch.bfloat16),
           "fp16": (np.float16, torch.float16)}
# Target size of one train shard: large enough for few files, small enough that a resumed
# build repeats little and a first map's sha256 check is short.
SHARD_BYTES = 256 * 2**20
HELDOUT_SPLITS = ("val", "test")


@dataclass(frozen=True)
class CacheKey:
    """Everything the cached numbers depend on. Equal keys = interchangeable caches.

    ``dtype`` None means "any" (a run checking a cache it was pointed at does not care
    how it is stored).
    """

    teacher: str  # distill.teacher.fingerprint.teacher_fingerprint
    tokenizer: str  # distill.data.batches.tokenizer_fingerprint
    data_sha256: str
    sequence_column: str
    split_method: str
    split: tuple[float, float, float]
    cluster_identity: float | None
    cluster_coverage: float | None
    block_size: int
    n_blocks: int  # K, the pool size
    precision: str  # the teacher forward's resolved precision (fp32 / bf16 / fp16 autocast)
    dtype: str | None  # storage dtype
    format: int = CACHE_FORMAT

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["split"] = list(self.split)
        return d

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def differences(self, cached: dict) -> list[str]:
        """'field: cache X, run Y' for every field where a cache's key (a manifest's dict) differs."""
        out = []
        for name, mine in self.to_dict().items():
            theirs = cached.get(name)
            if theirs != mine and not (name == "dtype" and mine is None):
                out.append(f"{name}: cache {theirs!r}, run {mine!r}")
        return out


def run_key(cfg, teacher_name: str, data_info: dict, n_blocks: int, precision: str,
            dtype: str | None = None) -> CacheKey:
    """The key of the cache a run with config `cfg` reads: its teacher, its data (`data_info`:
    `ProteinData.info`, which holds the data hash, the split and the tokenizer fingerprint),
    its pool of `n_blocks` blocks and its precision."""
    spec = SplitSpec.from_config(cfg)
    cluster = spec.method == "cluster"
    return CacheKey(
        teacher=teacher_fingerprint(teacher_name), tokenizer=data_info["tokenizer"],
        data_sha256=data_info["data_sha256"], sequence_column=cfg.sequence_column,
        split_method=spec.method, split=tuple(spec.fractions),
        cluster_identity=spec.identity if cluster else None, cluster_coverage=spec.coverage if cluster else None,
        block_size=cfg.block_size, n_blocks=n_blocks, precision=precision, dtype=dtype)


def folder_name(teacher_name: str, key: CacheKey) -> str:
    """'<teacher folder or hub name>-<key digest>', e.g. 'demo-teacher-3f2a...'."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(teacher_name.rstrip("/")).name).strip("-") or "teacher"
    return f"{slug}-{key.digest()}"


# ---------------------------------------------------------------------------------------------
# Planning: what a build will write, and where (no teacher weights are loaded)
# ---------------------------------------------------------------------------------------------


@dataclass
class CachePlan:
    """A cache to build for one run config: its key, folder, data and sizes."""

    key: CacheKey
    path: Path
    teacher_name: str
    data: ProteinData
    teacher_config: object
    runtime: Runtime
    cfg: object  # the TrainConfig the plan was made from

    @property
    def hidden_size(self) -> int:
        c = self.teacher_config
        return int(getattr(c, "n_embd", None) or c.hidden_size)

    @property
    def n_positions(self) -> int:
        return int(n_positions(self.teacher_config))

    def heldout_tokens(self) -> dict[str, int]:
        """Stored tokens per non-empty held-out split (each protein up to n_positions)."""
        return heldout_tokens(self.data, self.n_positions)

    def sizes(self) -> dict[str, int]:
        """Bytes per part of the cache: train hidden states, entropies, head, each held-out split."""
        return cache_sizes(self.key.n_blocks, self.key.block_size, self.hidden_size, self.teacher_config.vocab_size,
                           self.key.dtype, self.heldout_tokens())

    def describe(self) -> str:
        """The size line printed before a build."""
        sizes = self.sizes()
        k, t, d = self.key.n_blocks, self.key.block_size, self.hidden_size
        per_token = bytes_per_token(d, self.key.dtype)
        held = ", ".join(f"{name} {n:,} tokens {_mb(sizes[name])}" for name, n in self.heldout_tokens().items())
        return (f"teacher cache: {k:,} blocks × {t} tokens × {d} dims × {per_token // d} B = {_mb(sizes['train'])}, "
                f"{per_token / 1e3:.3g} kB per token "
                f"(+ entropies {_mb(sizes['entropy'])}, head {_mb(sizes['head'])}, {held}) = "
                f"{_mb(sum(sizes.values()))} {self.key.dtype} in {self.path}")


def heldout_tokens(data: ProteinData, positions: int) -> dict[str, int]:
    """Tokens a cache stores per non-empty held-out split of `data`: each protein up to `positions`."""
    return {name: sum(min(len(ids), positions) for ids in getattr(data, name).ids)
            for name in HELDOUT_SPLITS if len(getattr(data, name))}


def cache_sizes(n_blocks: int, block_size: int, hidden_size: int, vocab_size: int, dtype: str,
                heldout_tokens: dict[str, int]) -> dict[str, int]:
    """Bytes per part of a cache of `n_blocks` train blocks of `block_size` tokens and the held-out
    splits' tokens: train hidden states (storage dtype), fp32 entropies (T - 1 per block), the fp32
    head (V, d_t), each held-out split's hidden states (what `kdsweep estimate` also sizes)."""
    per_token = bytes_per_token(hidden_size, dtype)
    out = {"train": n_blocks * block_size * per_token, "entropy": n_blocks * (block_size - 1) * 4,
           "head": vocab_size * hidden_size * 4}
    out.update({name: n * per_token for name, n in heldout_tokens.items()})
    return out


def bytes_per_token(hidden_size: int, dtype: str) -> int:
    """Bytes one token's stored hidden state takes: d_t × the storage dtype's size
    (ProtGPT2, d_t = 1280, bf16: 2,560 B, so 50M train tokens take 128 GB)."""
    return hidden_size * np.dtype(_DTYPES[dtype][0]).itemsize


def _mb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.3g} MB"


def plan_teacher_cache(cfg, dtype: str, root: str | Path) -> CachePlan:
    """The cache a run with config `cfg` reads, stored in `dtype` under `root`: its key and
    folder. Tokenizes the data (through the tokenized-split cache) and reads the teacher's
    config; loads no weights."""
    if dtype not in STORAGE_DTYPES:
        raise ConfigError(f"cache.dtype: got {dtype!r}, allowed: {', '.join(STORAGE_DTYPES)}")
    rt = resolve_runtime(cfg.precision, cfg.device)
    inputs = load_run_inputs(cfg)
    name, data = inputs.teacher_name, inputs.data
    key = run_key(cfg, name, data.info, pool_size(cfg, len(data.train_blocks)), rt.precision, dtype)
    return CachePlan(key, Path(root) / folder_name(name, key), name, data, inputs.teacher_config, rt, cfg)


def is_complete(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


class BuildInterrupted(RuntimeError):
    """Raised by a build asked to stop after some parts (fault injection for tests)."""


def build_teacher_cache(plan: CachePlan, *, log: Callable[[str], None] = print, progress: bool = True,
                        shard_bytes: int = SHARD_BYTES, stop_after_parts: int | None = None,
                        on_progress: Callable[[int, int], object] | None = None) -> Path:
    """Build the cache `plan` describes (or return its folder if already complete).

    Resumable: parts recorded by an interrupted build are not computed again.
    `stop_after_parts` raises BuildInterrupted once that many parts have been written by
    this call (tests use it to interrupt a build at a known point). `on_progress(done, total)`
    is told the teacher tokens done and in all after every batch (a sweep's progress bar).
    """
    if is_complete(plan.path):
        TeacherCache.open(plan.path, plan.key)  # its key and files are this plan's, or a ConfigError/DataError
        log(f"teacher cache: complete, {plan.path}")
        return plan.path
    log(plan.describe())
    # Written through memory maps, which cannot report a full disk (SIGBUS): check the space first.
    check_free_space(plan.path, sum(plan.sizes().values()) - _partial_bytes(plan.path), f"the teacher cache {plan.path}")
    started = time.time()
    teacher = load_teacher(plan.teacher_name, device=plan.runtime.device)
    if not is_linear_head(teacher):
        raise ModelError(f"teacher {plan.teacher_name}: its logits are not a linear head of its last hidden "
                         "state, so its hidden states cannot stand in for it; set cache.enabled: false and "
                         "loss_impl: logits")
    builder = _Builder(plan, teacher, shard_bytes)
    partial = builder.open_partial()
    if (donor := heldout_donor(plan)) is not None and builder.adopt_heldout(donor):
        log(f"teacher cache: val/test hidden states linked from {donor} (the same proteins through the same teacher)")
    todo = [p for p in builder.parts() if p.name not in builder.done]
    total = sum(p.tokens for p in builder.parts())
    done = [total - sum(p.tokens for p in todo)]
    with _progress_bar(total, sum(p.tokens for p in todo), progress) as bar:
        def advance(tokens: int) -> None:
            bar.update(tokens)
            done[0] += tokens
            if on_progress is not None:
                on_progress(done[0], total)

        builder.advance = advance
        for written, part in enumerate(todo):
            if stop_after_parts is not None and written == stop_after_parts:
                raise BuildInterrupted(f"stopped after {written} parts (stop_after_parts)")
            builder.write_part(part)
    builder.write_manifest(time.time() - started)
    (partial / PROGRESS).unlink()  # the manifest now says what the folder holds
    try:
        os.rename(partial, plan.path)
    except OSError:
        if not is_complete(plan.path):
            raise
        shutil.rmtree(partial, ignore_errors=True)  # another builder finished the same key first
    else:
        builder.record_verified(plan.path)
    log(f"teacher cache: built in {time.time() - started:.1f} s, {plan.path}")
    return plan.path


def heldout_donor(plan: CachePlan) -> Path | None:
    """A complete cache beside `plan`'s folder whose val/test hidden states are the ones `plan` would
    compute: the same key but for the train pool (n_blocks: e.g. a `--smoke` sweep's shorter budget),
    the same teacher positions and eval batch size, and as many held-out tokens per split."""
    mine = {k: v for k, v in plan.key.to_dict().items() if k != "n_blocks"}
    for manifest_path in sorted(plan.path.parent.glob(f"*/{MANIFEST}")):
        m = _read_json(manifest_path)
        if manifest_path.parent == plan.path or not m or m.get("format") != CACHE_FORMAT:
            continue
        theirs = {k: v for k, v in m["key"].items() if k != "n_blocks"}
        if (theirs == mine and m["teacher"]["n_positions"] == plan.n_positions
                and m["build"]["eval_batch_size"] == plan.cfg.eval_batch_size
                and {k: v["n_tokens"] for k, v in m["heldout"].items()} == plan.heldout_tokens()):
            return manifest_path.parent
    return None


def _progress_bar(total: int, todo: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=total - todo, unit="tok", unit_scale=True, desc="teacher cache",
                disable=not enabled, mininterval=1.0)


@dataclass(frozen=True)
class _Part:
    name: str  # "train-00003", "head", "val", "test"
    tokens: int  # teacher tokens it computes (progress)
    blocks: range = range(0)  # train shards: the pool blocks it holds


class _Builder:
    def __init__(self, plan: CachePlan, teacher, shard_bytes: int):
        self.plan, self.teacher = plan, teacher
        block_bytes = plan.key.block_size * bytes_per_token(plan.hidden_size, plan.key.dtype)
        self.shard_blocks = max(1, shard_bytes // block_bytes)
        self.partial = plan.path.with_name(f"{plan.path.name}.partial-{os.getpid()}")
        self.done: dict[str, dict] = {}
        self.advance: Callable[[int], object] = lambda tokens: None  # progress: teacher tokens computed
        # file -> (sha256, stamp when hashed) of the files this process wrote and hashed
        self.hashed: dict[str, tuple[str, list[int]]] = {}
        self.head = teacher.get_output_embeddings()  # torch.nn.Linear: checked by is_linear_head

    def parts(self) -> list[_Part]:
        k, t = self.plan.key.n_blocks, self.plan.key.block_size
        shards = [_Part(f"train-{i:05d}", len(r) * t, r)
                  for i, r in enumerate(range(s, min(s + self.shard_blocks, k)) for s in range(0, k, self.shard_blocks))]
        held = [_Part(name, n) for name, n in self.plan.heldout_tokens().items()]
        return [*shards, _Part("head", 0), *held]

    # -- the partial folder -----------------------------------------------------------------
    def _layout(self) -> dict:
        return {"key": self.plan.key.to_dict(), "shard_blocks": self.shard_blocks}

    def open_partial(self) -> Path:
        """Our partial folder: an abandoned one of the same key adopted (resume), else a new one."""
        final = self.plan.path
        for other in sorted(final.parent.glob(f"{final.name}.partial-*")):
            pid = other.name.rpartition("-")[2]
            if other == self.partial or not pid.isdigit() or _alive(int(pid)):
                continue
            try:
                os.rename(other, self.partial)
                break
            except OSError:
                continue  # taken by another builder meanwhile
        self.partial.mkdir(parents=True, exist_ok=True)
        progress = _read_json(self.partial / PROGRESS)
        if progress.get("layout") == self._layout():
            self.done = {name: files for name, files in progress["parts"].items()
                         if all(_size(self.partial / f) == meta["bytes"] for f, meta in files.items())}
        return self.partial

    def adopt_heldout(self, donor: Path) -> bool:
        """The held-out parts not built yet, hard-linked from `donor` (`heldout_donor`; copied where
        a link cannot be made) with the donor's file records. Returns whether any was adopted."""
        files = read_manifest(donor)["files"]
        adopted = False
        for split in self.plan.heldout_tokens():
            if split in self.done:
                continue
            names = (f"{split}.hidden.npy", f"{split}.offsets.npy")
            for name in names:
                (self.partial / name).unlink(missing_ok=True)
                try:
                    os.link(donor / name, self.partial / name)
                except OSError:
                    shutil.copyfile(donor / name, self.partial / name)
            self._record(split, {name: files[name] for name in names})
            adopted = True
        return adopted

    def _record(self, part: str, files: dict) -> None:
        self.done[part] = files
        self.hashed.update({f: (meta["sha256"], digests.stamp(self.partial / f)) for f, meta in files.items()})
        _write_json(self.partial / PROGRESS, {"layout": self._layout(), "parts": self.done})

    # -- parts ------------------------------------------------------------------------------
    def write_part(self, part: _Part) -> None:
        if part.name == "head":
            weight, bias = self.head.weight, self.head.bias
            files = {"head.weight.npy": weight.detach().float().cpu().numpy()}
            if bias is not None:
                files["head.bias.npy"] = bias.detach().float().cpu().numpy()
            self._record(part.name, {f: _write_array(self.partial / f, a) for f, a in files.items()})
        elif part.name in HELDOUT_SPLITS:
            self._record(part.name, self._write_heldout(part.name))
        else:
            self._record(part.name, self._write_shard(part))

    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(b, L) ids -> (b, L, d_t) hidden states rounded to the storage dtype (as torch)."""
        rt = self.plan.runtime
        with torch.no_grad(), rt.autocast():
            hidden = head_inputs(self.teacher, ids.to(rt.device), None if mask is None else mask.to(rt.device)).hidden
        return hidden.to(_DTYPES[self.plan.key.dtype][1])

    def _write_shard(self, part: _Part) -> dict:
        key, rt = self.plan.key, self.plan.runtime
        blocks = self.plan.data.train_blocks[part.blocks.start:part.blocks.stop]  # (S, T)
        n, t, d = len(blocks), key.block_size, self.plan.hidden_size
        np_dtype = _DTYPES[key.dtype][0]
        hidden_file, entropy_file = f"{part.name}.hidden.npy", f"{part.name}.entropy.npy"
        hidden_out = _open_tmp(self.partial / hidden_file, np_dtype, (n, t, d))
        entropy_out = _open_tmp(self.partial / entropy_file, np.float32, (n, t - 1))
        batch = self.plan.cfg.micro_batch_size
        for start in range(0, n, batch):
            stored = self._hidden(blocks[start:start + batch])  # (b, T, d_t), storage dtype
            hidden_out[start:start + len(stored)] = _to_numpy(stored)
            # The entropy the uncertainty weights need, computed from the STORED hidden states
            # (so a run's head applied to them reproduces it), under the run's autocast.
            with rt.autocast():
                entropy = teacher_entropy_from_hidden(stored.float(), self.head.weight, self.head.bias)
            entropy_out[start:start + len(stored)] = entropy.float().cpu().numpy()
            self.advance(stored.shape[0] * t)
        return {hidden_file: _finish_tmp(hidden_out, self.partial / hidden_file),
                entropy_file: _finish_tmp(entropy_out, self.partial / entropy_file)}

    def _write_heldout(self, split: str) -> dict:
        heldout: HeldOut = getattr(self.plan.data, split)
        n_pos = self.plan.n_positions
        lengths = np.array([min(len(ids), n_pos) for ids in heldout.ids], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (n + 1,)
        hidden_file, offsets_file = f"{split}.hidden.npy", f"{split}.offsets.npy"
        out = _open_tmp(self.partial / hidden_file, _DTYPES[self.plan.key.dtype][0],
                        (int(offsets[-1]), self.plan.hidden_size))
        pad_id = self.plan.teacher_config.eos_token_id or 0
        for batch in heldout.batches(self.plan.cfg.eval_batch_size, n_pos, pad_id):
            hidden = _to_numpy(self._hidden(batch["input_ids"], batch["attention_mask"]))  # (B, L, d_t)
            for row, protein in enumerate(batch["protein"].tolist()):
                lo, hi = offsets[protein], offsets[protein + 1]
                out[lo:hi] = hidden[row, : hi - lo]
            self.advance(int(batch["attention_mask"].sum()))
        return {hidden_file: _finish_tmp(out, self.partial / hidden_file),
                offsets_file: _write_array(self.partial / offsets_file, offsets)}

    def record_verified(self, folder: Path) -> None:
        """The build's own record: every file this process hashed as it wrote it, unchanged since
        (same size, times, inode; moved with its folder), needs no verification on this node."""
        for name, (sha256, when_hashed) in self.hashed.items():
            if digests.stamp(folder / name) == when_hashed:
                digests.record(folder / name, "sha256", sha256, when_hashed)

    def write_manifest(self, seconds: float) -> None:
        plan, key = self.plan, self.plan.key
        files = {f: meta for part in self.done.values() for f, meta in part.items()}
        manifest = {
            "format": CACHE_FORMAT, "kdsweep_version": _kdsweep_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "key": key.to_dict(), "key_digest": key.digest(), "dtype": key.dtype,
            "teacher": {"name": plan.teacher_name, "params": sum(p.numel() for p in self.teacher.parameters()),
                        "hidden_size": plan.hidden_size, "vocab_size": plan.teacher_config.vocab_size,
                        "n_positions": plan.n_positions, "head_bias": "head.bias.npy" in files},
            "train": {"n_blocks": key.n_blocks, "block_size": key.block_size, "shard_blocks": self.shard_blocks,
                      "shards": [p.name for p in self.parts() if p.blocks]},
            "heldout": {name: {"n_proteins": len(getattr(plan.data, name)), "n_tokens": n}
                        for name, n in plan.heldout_tokens().items()},
            "files": files,
            "build": {"device": str(plan.runtime.device), "seconds": round(seconds, 3),
                      "batch_size": plan.cfg.micro_batch_size, "eval_batch_size": plan.cfg.eval_batch_size},
        }
        _write_json(self.partial / MANIFEST, manifest)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    """A storage-dtype tensor as the numpy array written to disk (bf16 as its uint16 bits)."""
    x = x.detach().cpu()
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().view(np.uint16)
    return x.numpy()


def _partial_bytes(final: Path) -> int:
    """Bytes on disk in unfinished builds of this cache (a resumed build does not write them again)."""
    return sum(f.stat().st_blocks * 512 for d in final.parent.glob(f"{final.name}.partial-*") if d.is_dir()
               for f in d.iterdir() if f.is_file())


def _open_tmp(final: Path, dtype, shape) -> np.memmap:
    tmp = final.with_name(final.name + ".tmp")
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=tuple(shape))
    try:  # its blocks reserved now: a full disk is an OSError here, not a SIGBUS mid-write
        with open(tmp, "rb+") as fh:
            reserve(fh.fileno(), os.fstat(fh.fileno()).st_size, tmp)
    except OSError:
        del array
        tmp.unlink(missing_ok=True)
        raise
    return array


def _finish_tmp(array: np.memmap, final: Path) -> dict:
    """Flush a memmap written under `<final>.tmp`, fsync it, rename it to `final`: its file record."""
    array.flush()
    tmp = Path(array.filename)
    shape, dtype = list(array.shape), str(array.dtype)
    del array
    put_in_place(tmp, final)
    return _file_record(final, shape, dtype)


def _write_array(final: Path, array: np.ndarray) -> dict:
    out = _open_tmp(final, array.dtype, array.shape)
    out[...] = array
    return _finish_tmp(out, final)


def _file_record(path: Path, shape, dtype: str) -> dict:
    return {"sha256": digests.sha256_file(path), "bytes": path.stat().st_size, "shape": list(shape), "dtype": dtype}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, obj: dict) -> None:
    write_atomic(path, dumps(obj, indent=1) + "\n")


def _kdsweep_version() -> str:
    try:
        return version("kdsweep")
    except PackageNotFoundError:
        return "0+unknown"


def read_manifest(path: str | Path) -> dict:
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        partial = sorted(Path(path).parent.glob(f"{Path(path).name}.partial-*"))
        hint = f" (an unfinished build is in {partial[0]}: run `kdsweep cache build` again)" if partial else ""
        raise DataError(f"teacher_cache: {path}: no complete teacher cache here{hint}")
    try:
        return json.loads(manifest_path.read_text())
    except ValueError as e:
        raise DataError(f"teacher_cache: {manifest_path}: unreadable manifest ({e})") from None


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

class TeacherCache:
    """A complete cache, opened for reading. Arrays are memory-mapped on first use."""

    def __init__(self, path: Path, manifest: dict):
        self.path, self.manifest = path, manifest
        self.dtype = manifest["dtype"]
        self.torch_dtype = _DTYPES[self.dtype][1]
        self.shard_blocks = manifest["train"]["shard_blocks"]
        self._maps: dict[str, np.ndarray] = {}
        # Files whose current version is not recorded as verified on this node: hashed on first map.
        self._unverified = {Path(p).name for p in digests.unverified(
            {str(path / name): meta["sha256"] for name, meta in manifest["files"].items()})}
        self.bytes_read = 0  # bytes copied out of the cache's files by this object (train, held-out, head)

    @classmethod
    def open(cls, path: str | Path, expected: CacheKey | None) -> TeacherCache:
        """Open the cache in `path` for a run whose key is `expected` (dtype None: any; None: a
        caller that only verifies the files, whose key was checked already).

        Raises ConfigError naming every key field that differs, DataError for a missing,
        unfinished or damaged cache (naming the file)."""
        path = Path(path)
        manifest = read_manifest(path)
        if manifest.get("format") != CACHE_FORMAT:
            raise DataError(f"teacher_cache: {path}: cache format {manifest.get('format')}, this kdsweep reads "
                            f"format {CACHE_FORMAT}; build it again")
        if expected is not None and (bad := expected.differences(manifest["key"])):
            raise ConfigError(f"teacher_cache: {path} was built for another run: " + "; ".join(bad))
        for name, meta in manifest["files"].items():
            size = _size(path / name)
            if size != meta["bytes"]:
                raise DataError(f"teacher_cache: {path / name}: "
                                f"{'missing' if size is None else f'{size} bytes'}, the manifest says "
                                f"{meta['bytes']} bytes; build the cache again")
        return cls(path, manifest)

    @property
    def key_digest(self) -> str:
        return self.manifest["key_digest"]

    @property
    def teacher_params(self) -> int:
        return int(self.manifest["teacher"]["params"])

    def _verify(self, name: str) -> None:
        """Hash one file unless its current version is recorded as verified; DataError if it differs."""
        if name in self._unverified:
            path = self.path / name
            if not digests.has_sha256(path, self.manifest["files"][name]["sha256"]):
                raise DataError(f"teacher_cache: {path}: sha256 differs from the manifest (damaged file); "
                                "build the cache again")
            self._unverified.discard(name)

    def verify(self) -> None:
        """Verify every file not yet verified on this node (once per node, before a sweep's trials)."""
        for name in sorted(self._unverified):
            self._verify(name)

    def _array(self, name: str) -> np.ndarray:
        """The memory-mapped array of one file, verified (see `_verify`) before it is first mapped."""
        if name not in self._maps:
            self._verify(name)
            self._maps[name] = np.load(self.path / name, mmap_mode="r")
        return self._maps[name]

    def _read(self, array: np.ndarray) -> np.ndarray:
        """`array` (a copy out of a map) counted in `bytes_read`."""
        self.bytes_read += array.nbytes
        return array

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        """A storage-dtype numpy array (a copy, not the map) as a torch tensor of the storage dtype."""
        t = torch.from_numpy(np.ascontiguousarray(array))
        return t.view(torch.int16).view(torch.bfloat16) if self.dtype == "bf16" else t

    def head(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(V, d_t) fp32 weight and (V,) bias or None: the teacher's LM head."""
        weight = torch.from_numpy(self._read(np.array(self._array("head.weight.npy"))))
        bias = (torch.from_numpy(self._read(np.array(self._array("head.bias.npy"))))
                if self.manifest["teacher"]["head_bias"] else None)
        return weight, bias

    def _rows(self, suffix: str, blocks: torch.Tensor) -> list[np.ndarray]:
        n = self.manifest["train"]["n_blocks"]
        out = []
        for b in blocks.tolist():
            if not 0 <= b < n:
                raise IndexError(f"teacher cache {self.path}: block {b} outside its pool of {n} blocks")
            shard, row = divmod(b, self.shard_blocks)
            out.append(self._array(f"train-{shard:05d}.{suffix}.npy")[row])
        return out

    def train_hidden(self, blocks: torch.Tensor) -> torch.Tensor:
        """(b,) pool block indices -> (b, T, d_t) hidden states, storage dtype, on the CPU."""
        return self._tensor(self._read(np.stack(self._rows("hidden", blocks))))

    def train_entropy(self, blocks: torch.Tensor) -> torch.Tensor:
        """(b,) pool block indices -> (b, T - 1) fp32 teacher entropies at tau = 1, on the CPU."""
        return torch.from_numpy(self._read(np.stack(self._rows("entropy", blocks))))

    def check_heldout(self, split: str, heldout: HeldOut) -> None:
        """Refuse a held-out set that is not the one this cache stored (count or lengths differ)."""
        if split not in self.manifest["heldout"]:
            raise DataError(f"teacher_cache: {self.path} holds no {split!r} split")
        lengths = np.diff(self._array(f"{split}.offsets.npy"))
        n_pos = self.manifest["teacher"]["n_positions"]
        ours = np.array([min(len(ids), n_pos) for ids in heldout.ids], dtype=np.int64)
        if len(ours) > len(lengths) or not np.array_equal(lengths[: len(ours)], ours):
            raise DataError(f"teacher_cache: {self.path}: its {split} proteins ({len(lengths)}) are not this "
                            f"run's ({len(ours)}, or their token counts differ)")

    def heldout_hidden(self, split: str, proteins: torch.Tensor, width: int) -> torch.Tensor:
        """(B,) protein indices of `split` -> (B, width, d_t) hidden states, zero past each protein's
        stored length (padding, never scored), storage dtype, on the CPU."""
        flat, offsets = self._array(f"{split}.hidden.npy"), self._array(f"{split}.offsets.npy")
        out = np.zeros((len(proteins), width, flat.shape[1]), dtype=flat.dtype)
        for row, p in enumerate(proteins.tolist()):
            lo, hi = int(offsets[p]), int(offsets[p + 1])
            n = min(width, hi - lo)
            out[row, :n] = flat[lo:lo + n]
            self.bytes_read += flat[lo:lo + n].nbytes
        return self._tensor(out)


def cache_size_bytes(path: str | Path) -> int:
    """Bytes on disk of a complete cache (its manifest's files)."""
    return sum(meta["bytes"] for meta in read_manifest(path)["files"].values())
