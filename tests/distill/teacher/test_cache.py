"""distill.teacher.cache and the cached teacher source: exact, resumable, atomic, verified (real tiny teachers
and real proteins, CPU)."""

import hashlib
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kdsweep.distill.data.batches import prepare_data
from kdsweep.distill.data.splits import SplitSpec
from kdsweep.distill.errors import ConfigError, DataError
from kdsweep.distill.files import digests
from kdsweep.distill.loss.fused import teacher_entropy_from_hidden
from kdsweep.distill.loss.heads import head_inputs
from kdsweep.distill.models import PROTGPT2_TOKENIZER_DIR, load_teacher, load_teacher_config, load_tokenizer
from kdsweep.distill.run.checkpoint import latest_checkpoint
from kdsweep.distill.run.rundir import eval_rows, read_log
from kdsweep.distill.run.train import run_training
from kdsweep.distill.teacher.cache import (
    MANIFEST,
    BuildInterrupted,
    TeacherCache,
    build_teacher_cache,
    bytes_per_token,
    cache_size_bytes,
    plan_teacher_cache,
    read_manifest,
)
from tests.fixtures import start_row, tiny_config

# tiny_config: 6 steps x 4 blocks -> a pool of 24 blocks of 64 tokens; the char teacher is 32 wide.
# 8 blocks per shard: 3 train shards, then the head, val and test: 6 parts.
SHARD_BYTES = 8 * 64 * 32 * 4
BOTH_ARM = dict(uncertainty=True, smoothing=0.1, temperature=2.0, alpha=0.3)
TEACHER_METRICS = ("ppl", "ppl_teacher", "ppl_ratio", "kl_teacher", "ece", "ece_teacher", "accuracy")


def build(cfg, dtype, root, **kwargs):
    return build_teacher_cache(plan_teacher_cache(cfg, dtype, root), progress=False, log=lambda _: None,
                               shard_bytes=SHARD_BYTES, **kwargs)


@pytest.fixture(scope="module")
def run_cfg(char_teacher, small_fasta, tmp_path_factory):
    """The run config every test here trains or builds for (its output_dir is replaced per run)."""
    return tiny_config(char_teacher, small_fasta, tmp_path_factory.mktemp("unused"), **BOTH_ARM)


@pytest.fixture(scope="module")
def fp32_cache(run_cfg, tmp_path_factory):
    return build(run_cfg, "fp32", tmp_path_factory.mktemp("caches"))


@pytest.fixture(scope="module")
def live_run(run_cfg, tmp_path_factory):
    """A run with the live teacher, test and val metrics included."""
    out = tmp_path_factory.mktemp("live") / "run"
    assert run_training(run_cfg.replace(output_dir=str(out))).status == "completed"
    return out



def _summary_metrics(run_dir):
    events = {r["event"]: r for r in read_log(run_dir) if r.get("event") in ("val", "test")}
    return events["val"], events["test"]


def test_cache_holds_the_teachers_hidden_states_entropies_and_heldout(run_cfg, fp32_cache, char_teacher):
    manifest = read_manifest(fp32_cache)
    assert manifest["train"] == {"n_blocks": 24, "block_size": 64, "shard_blocks": 8,
                                 "shards": ["train-00000", "train-00001", "train-00002"]}
    assert manifest["key"]["n_blocks"] == 24 and manifest["key"]["precision"] == "fp32"
    cache = TeacherCache.open(fp32_cache, plan_teacher_cache(run_cfg, "fp32", fp32_cache.parent).key)
    teacher = load_teacher(str(char_teacher))
    tokenizer = load_tokenizer(str(char_teacher))
    data = prepare_data(run_cfg.data, tokenizer, split=SplitSpec.from_config(run_cfg), block_size=64)
    weight, bias = cache.head()
    assert torch.equal(weight, teacher.lm_head.weight) and bias is None
    assert cache.teacher_params == sum(p.numel() for p in teacher.parameters())

    blocks = torch.tensor([23, 0, 9, 8])  # across shards, any order
    with torch.no_grad():
        live = head_inputs(teacher, data.train_blocks[blocks]).hidden  # (4, 64, 32)
    torch.testing.assert_close(cache.train_hidden(blocks), live, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cache.train_entropy(blocks), teacher_entropy_from_hidden(live, weight),
                               rtol=1e-5, atol=1e-6)
    for split in ("val", "test"):
        heldout = getattr(data, split)
        cache.check_heldout(split, heldout)
        proteins = torch.tensor([len(heldout) - 1, 0, 3])
        width = max(len(heldout.ids[p]) for p in proteins.tolist())
        got = cache.heldout_hidden(split, proteins, width)
        for row, p in enumerate(proteins.tolist()):
            ids = torch.from_numpy(heldout.ids[p])[None]
            with torch.no_grad():
                want = head_inputs(teacher, ids).hidden[0]
            torch.testing.assert_close(got[row, : len(want)], want, rtol=1e-5, atol=1e-6)
            assert not got[row, len(want):].any()  # padding


def test_fp32_cache_trains_like_the_live_teacher(run_cfg, fp32_cache, live_run, tmp_path, monkeypatch):
    """Same loss per step, val ppl, weights and teacher metrics (val and test) as the live teacher, to float
    rounding (rel 1e-5), in the arm that also reads the cached entropies; the teacher's weights are never
    loaded (anything calling load_teacher would fail)."""

    def no_teacher(*args, **kwargs):
        raise AssertionError("a run reading the teacher cache loaded the teacher's weights")

    monkeypatch.setattr("kdsweep.distill.teacher.source.load_teacher", no_teacher)
    out = tmp_path / "cached"
    assert run_training(run_cfg.replace(output_dir=str(out), teacher_cache=str(fp32_cache))).status == "completed"
    start = start_row(out)
    assert start["teacher"] == f"cache {read_manifest(fp32_cache)['key_digest']} {fp32_cache}"
    assert start_row(live_run)["teacher"].startswith("live ")
    for ra, rb in zip(eval_rows(live_run), eval_rows(out), strict=True):
        for key in ("train_loss", "train_hard", "train_soft", "val_ppl", "grad_norm"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5), (key, ra["step"])
    # What the run paid: nothing hashed (the data file, the teacher and the cache were verified
    # before, by the live run and the build), the cache read once per block it used.
    rows = eval_rows(out)
    assert [r["bytes_hashed"] for r in rows] == [0] * len(rows)
    assert 0 < rows[0]["cache_bytes_read"] < rows[-1]["cache_bytes_read"]
    assert all(r["cache_bytes_read"] == 0 for r in eval_rows(live_run))
    wa = load_file(str(latest_checkpoint(live_run / "checkpoints") / "model.safetensors"))
    wb = load_file(str(latest_checkpoint(out / "checkpoints") / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6, msg=k)
    for live, cached in zip(_summary_metrics(live_run), _summary_metrics(out)):
        for key in TEACHER_METRICS:
            assert cached[key] == pytest.approx(live[key], rel=1e-5), key
        assert cached["teacher_params"] == live["teacher_params"] and cached["compression"] == live["compression"]


@pytest.mark.parametrize("dtype, bound", [("bf16", 2e-2), ("fp16", 2e-3)])
def test_half_precision_storage_stays_close(run_cfg, live_run, tmp_path, dtype, bound):
    """bf16 / fp16 storage rounds the hidden states (8 / 11 significant bits): the differences to the live
    teacher are measured (printed with -s) and bounded."""
    path = build(run_cfg, dtype, tmp_path)
    manifest = read_manifest(path)
    assert manifest["files"]["train-00000.hidden.npy"]["dtype"] == ("uint16" if dtype == "bf16" else "float16")
    out = tmp_path / "run"
    assert run_training(run_cfg.replace(output_dir=str(out), teacher_cache=str(path))).status == "completed"
    diffs = {}
    for key in ("train_loss", "val_ppl"):
        diffs[key] = max(abs(rb[key] / ra[key] - 1) for ra, rb in zip(eval_rows(live_run), eval_rows(out), strict=True))
    for key in ("ppl_teacher", "kl_teacher"):
        live, cached = _summary_metrics(live_run)[1][key], _summary_metrics(out)[1][key]
        diffs[f"test {key}"] = abs(cached / live - 1)
    print(f"\n{dtype} storage, max relative difference to the live teacher: "
          + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert 0 < max(diffs.values()) < bound  # rounding is visible, and small


def test_interrupted_build_resumes_to_the_same_bytes_and_never_looks_complete(run_cfg, fp32_cache, tmp_path):
    plan = plan_teacher_cache(run_cfg, "fp32", tmp_path)
    with pytest.raises(BuildInterrupted):
        build(run_cfg, "fp32", tmp_path, stop_after_parts=2)
    [partial] = tmp_path.glob(f"{plan.path.name}.partial-*")
    assert not plan.path.exists()  # atomic: no folder under the final name
    with pytest.raises(DataError, match="no complete teacher cache here.*unfinished build"):
        TeacherCache.open(plan.path, plan.key)
    kept = {p.name: p.stat().st_mtime_ns for p in partial.glob("train-0000[01].*.npy")}
    assert len(kept) == 4  # two shards' hidden states and entropies

    # A new process (here: a pid that no longer runs) adopts the abandoned partial folder.
    partial.rename(partial.with_name(f"{plan.path.name}.partial-999999999"))
    assert build(run_cfg, "fp32", tmp_path) == plan.path
    assert not list(tmp_path.glob("*.partial-*"))
    assert {n: (plan.path / n).stat().st_mtime_ns for n in kept} == kept  # not computed again

    def digests(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.npy")}

    assert digests(plan.path) == digests(fp32_cache)  # identical to the uninterrupted build
    assert read_manifest(plan.path)["files"] == read_manifest(fp32_cache)["files"]


def test_a_run_with_another_key_is_refused_naming_each_field(run_cfg, fp32_cache, tmp_path):
    cases = [({"block_size": 32}, ["block_size: cache 64, run 32"]),
             ({"max_steps": 12}, ["n_blocks: cache 24, run 48"]),
             ({"split": [0.8, 0.1, 0.1]}, ["split: cache [0.9, 0.05, 0.05], run [0.8, 0.1, 0.1]"])]
    for change, needles in cases:
        out = tmp_path / "refused"
        with pytest.raises(ConfigError) as err:
            run_training(run_cfg.replace(output_dir=str(out), teacher_cache=str(fp32_cache), **change))
        assert str(err.value).startswith(f"teacher_cache: {fp32_cache} was built for another run: ")
        for needle in needles:
            assert needle in str(err.value), (change, str(err.value))
        assert not out.exists()  # refused before anything was written


def test_a_damaged_cache_names_the_file(run_cfg, fp32_cache, tmp_path):
    key = plan_teacher_cache(run_cfg, "fp32", fp32_cache.parent).key
    copy = tmp_path / "copy"
    shutil.copytree(fp32_cache, copy)
    # Same size, one byte flipped: found by the sha256 check when the shard is first mapped.
    shard = copy / "train-00001.hidden.npy"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    cache = TeacherCache.open(copy, key)
    cache.train_hidden(torch.tensor([0, 7]))  # shard 0 is intact
    with pytest.raises(DataError, match=r"train-00001\.hidden\.npy: sha256 differs from the manifest"):
        cache.train_hidden(torch.tensor([8]))
    # Truncated: found on open, from the manifest's sizes.
    entropy = copy / "train-00002.entropy.npy"
    entropy.write_bytes(entropy.read_bytes()[:-4])
    with pytest.raises(DataError, match=r"train-00002\.entropy\.npy: \d+ bytes, the manifest says \d+ bytes"):
        TeacherCache.open(copy, key)
    (copy / MANIFEST).unlink()
    with pytest.raises(DataError, match="no complete teacher cache here"):
        TeacherCache.open(copy, key)


def _read_everything(cache):
    cache.head()
    cache.train_hidden(torch.arange(24))
    cache.train_entropy(torch.arange(24))
    cache.heldout_hidden("val", torch.arange(4), 16)


def test_a_verified_cache_hashes_nothing_and_a_flipped_byte_is_still_caught(run_cfg, fp32_cache, tmp_path):
    key = plan_teacher_cache(run_cfg, "fp32", fp32_cache.parent).key
    total = cache_size_bytes(fp32_cache)
    # The build recorded what it hashed as it wrote: reading it all hashes nothing.
    before = digests.bytes_hashed()
    cache = TeacherCache.open(fp32_cache, key)
    _read_everything(cache)
    assert digests.bytes_hashed() - before == 0 and cache.bytes_read > 24 * 64 * 32 * 4
    # A copy (another inode) is verified once, by `verify` (what a sweep runs once per node) ...
    copy = tmp_path / "copy"
    shutil.copytree(fp32_cache, copy)
    before = digests.bytes_hashed()
    TeacherCache.open(copy, key).verify()
    assert digests.bytes_hashed() - before == total
    # ... and then never again, in any process of this node that opens it.
    before = digests.bytes_hashed()
    _read_everything(TeacherCache.open(copy, key))
    assert digests.bytes_hashed() - before == 0
    # One byte flipped in place, its mtime set back: named at the first read of that file, and only
    # that file is hashed again.
    shard = copy / "train-00001.hidden.npy"
    st = shard.stat()
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    cache = TeacherCache.open(copy, key)
    before = digests.bytes_hashed()
    cache.train_hidden(torch.tensor([0, 7, 16]))  # shards 0 and 2
    assert digests.bytes_hashed() - before == 0
    with pytest.raises(DataError, match=r"train-00001\.hidden\.npy: sha256 differs from the manifest"):
        cache.train_hidden(torch.tensor([8]))
    assert digests.bytes_hashed() - before == st.st_size


def test_numpy_has_no_bf16_so_it_is_stored_as_its_bits(run_cfg, tmp_path):
    path = build(run_cfg, "bf16", tmp_path)
    cache = TeacherCache.open(path, plan_teacher_cache(run_cfg, "bf16", tmp_path).key)
    raw = np.load(path / "train-00000.hidden.npy")
    assert raw.dtype == np.uint16
    hidden = cache.train_hidden(torch.tensor([0]))
    assert hidden.dtype == torch.bfloat16
    assert np.array_equal(hidden.view(torch.int16).numpy().view(np.uint16), raw[:1])


def test_protgpt2_takes_2_56_kb_per_token_in_bf16():
    """The figure the size line and the docs quote: ProtGPT2's d_t = 1280 (its real config) x 2 bytes."""
    d_t = load_teacher_config(str(PROTGPT2_TOKENIZER_DIR)).n_embd
    assert d_t == 1280
    assert bytes_per_token(d_t, "bf16") == bytes_per_token(d_t, "fp16") == 2560
    assert bytes_per_token(d_t, "fp32") == 5120
    assert 50_000_000 * bytes_per_token(d_t, "bf16") == 128e9  # protgpt2.yaml's token budget: 128 GB


def test_a_build_that_differs_only_in_its_train_pool_links_the_val_test_parts(run_cfg, fp32_cache, tmp_path):
    """A --smoke sweep's cache (a shorter budget: a smaller pool) beside the full one: its val/test hidden
    states are the same proteins through the same teacher, so they are linked, not computed; a cache of
    another eval batch size is no donor (batching may change the last bits)."""
    root = tmp_path / "caches"
    shutil.copytree(fp32_cache, root / fp32_cache.name)
    donor = root / fp32_cache.name
    logged = []
    shorter = run_cfg.replace(max_steps=3)  # 12 blocks instead of 24: another key
    path = build_teacher_cache(plan_teacher_cache(shorter, "fp32", root), progress=False, log=logged.append,
                               shard_bytes=SHARD_BYTES)
    assert path != donor and any(f"linked from {donor}" in line for line in logged), logged
    for name in ("val.hidden.npy", "val.offsets.npy", "test.hidden.npy", "test.offsets.npy"):
        assert (path / name).stat().st_ino == (donor / name).stat().st_ino  # one copy on disk
        assert read_manifest(path)["files"][name] == read_manifest(donor)["files"][name]
    cache = TeacherCache.open(path, plan_teacher_cache(shorter, "fp32", root).key)
    live = TeacherCache.open(donor, plan_teacher_cache(run_cfg, "fp32", root).key)
    proteins = torch.arange(4)
    assert torch.equal(cache.heldout_hidden("val", proteins, 32), live.heldout_hidden("val", proteins, 32))
    assert read_manifest(path)["train"]["n_blocks"] == 12

    other = run_cfg.replace(max_steps=3, eval_batch_size=4)
    shutil.copytree(fp32_cache, tmp_path / "third" / fp32_cache.name)
    logged.clear()
    build_teacher_cache(plan_teacher_cache(other, "fp32", tmp_path / "third"), progress=False, log=logged.append,
                        shard_bytes=SHARD_BYTES)
    assert not any("linked from" in line for line in logged), logged
