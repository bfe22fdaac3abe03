"""`sweep export --students` on the real analysis sweep: the replicate seed chosen on val, and the verdict
`kdsweep analyze` wrote for each arm in its model card."""

from __future__ import annotations

import shutil

import pandas as pd

from kdsweep.analysis.load import replicates_frame
from kdsweep.analysis.report import analyze
from kdsweep.analysis.verdicts import TUNED
from kdsweep.sweeps.export import export
from kdsweep.sweeps.layout import SweepDir, student_folder_name
from kdsweep.sweeps.space import BASELINE, load_space


def test_students_carry_the_seed_chosen_on_val_and_the_analysis_verdict(sweep, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sd = SweepDir(tmp_path / "store" / sweep.name)
    shutil.copytree(sweep.root, sd.root, ignore=shutil.ignore_patterns("analysis", "checkpoints"))
    out = tmp_path / "best"
    before = {p.name for p in export(sd, out, students=True) if p.is_dir()}
    assert "none yet: `kdsweep analyze" in (out / student_folder_name("demo-s", "both") / "README.md").read_text()
    analyze(sd)
    verdicts = pd.read_csv(sd.analysis / "tables" / "verdicts.csv")
    reps = replicates_frame(sd)
    tuned = reps[(reps["status"] == "completed") & (reps["off"] == "") & reps["val_ppl_ratio"].notna()]
    space = load_space(sd.space)
    shutil.rmtree(out)
    written = export(sd, out, students=True)
    assert {p.name for p in written if p.is_dir()} == before == {student_folder_name(s, a) for s in space.scales
                                                                  for a in space.arms}
    for scale in space.scales:
        for arm in space.arms:
            folder = out / student_folder_name(scale, arm)
            card = (folder / "README.md").read_text()
            mine = tuned[(tuned["scale"] == scale) & (tuned["arm"] == arm)]
            best = mine.loc[mine["val_ppl_ratio"].idxmin()]
            assert f"replicate seed {best['seed']}: the lowest val ppl_ratio" in card, card
            assert (folder / "model.safetensors").read_bytes() == \
                (sd.replicates / best["replicate"] / "student" / "model.safetensors").read_bytes()
            row = verdicts[(verdicts["scale"] == scale) & (verdicts["arm"] == arm) & (verdicts["comparison"] == TUNED)]
            if arm == BASELINE:
                assert row.empty and f"none: {BASELINE} has no row at {scale}" in card
            else:
                [r] = row.to_dict("records")
                assert f"{r['verdict_holm']} after Holm's correction (raw: {r['verdict']})" in card
                assert f"(n={r['n']} {r['unit']}," in card
    model = AutoModelForCausalLM.from_pretrained(out / "demo-s_both")
    tok = AutoTokenizer.from_pretrained(out / "demo-s_both")
    assert model.config.vocab_size == len(tok) and model.num_parameters() > 0
