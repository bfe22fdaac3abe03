"""kdsweep.distill: data, models, KD loss, training loop and metrics (no Ray here).

Sub-packages, lowest first: `files` (atomic writes, digests, numbers, checked reading), `data` (proteins,
splits, homology, leakage, exposure, training blocks), `loss` (the KD loss: reference, chunked, fused),
`eval` (held-out metrics, generation), `teacher` (the teacher cache and source, the demo teacher),
`run` (the training loop, checkpoints, run folders, the commands' engines). Beside them: `errors`,
`runtime`, `seeding`, `optim`, `models`, `config`, `inputs` (docs/layout.md gives the import order;
tests/test_structure.py checks it). Comments cite the method, `docs/method.md`, as `method §N` (section N,
step N.k).
"""

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"  # the scale presets, bundled proteins, demo teacher, ProtGPT2's tokenizer
