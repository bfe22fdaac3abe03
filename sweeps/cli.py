"""`kdsweep` command line: a thin layer that parses arguments and calls library functions.

Errors caused by input (bad config, data, model paths) print one message and
exit with status 2; nothing is half-written because the libraries validate
before they write.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distill.errors import KDSweepError
from distill.splits import SplitSpec


def _train(args) -> int:
    from distill.config import load_config
    from distill.evaluate import headline
    from distill.train import run_training

    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"output_dir={args.out}")
    cfg = load_config(args.config, overrides)
    result = run_training(cfg)
    print(f"status: {result.status} at step {result.step}; best val_ppl {result.best_val_ppl:.4f} (step {result.best_step})")
    if result.final_metrics:
        print("test split: " + headline(result.final_metrics))
    print(f"student: {result.run_dir / 'student'}\nmetrics: {result.run_dir / 'metrics.json'}")
    return 0 if result.status == "completed" else 1


def _evaluate(args) -> int:
    from distill.evaluate import headline
    from distill.evaluate import evaluate_dirs

    metrics = evaluate_dirs(args.student, args.teacher, data=args.data, device=args.device)
    print(json.dumps(metrics, indent=2, default=str))
    print(headline(metrics))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(metrics, indent=2, default=str) + "\n")
        print(f"written: {args.out}")
    return 0


def _demo_teacher(args) -> int:
    from distill.demo_teacher import build_demo_teacher

    build_demo_teacher(args.out, **({"steps": args.steps} if args.steps else {}))
    return 0


def _sweep_run(args) -> int:
    from sweeps.runner import next_steps, run_sweep
    from sweeps.space import load_space, smoke_space
    from sweeps.status import format_status, sweep_status

    space = load_space(args.space)  # validated before Ray starts
    if args.smoke:
        space = smoke_space(space)
    sd = run_sweep(space, name=args.name, storage=args.storage, address=args.address)
    print(format_status(sweep_status(sd)))
    print(next_steps(sd, args.storage))
    return 0


def _sweep_resume(args) -> int:
    from sweeps.runner import next_steps, resume_sweep
    from sweeps.status import format_status, sweep_status

    sd = resume_sweep(args.name, storage=args.storage, address=args.address)
    print(format_status(sweep_status(sd)))
    print(next_steps(sd, args.storage))
    return 0


def _sweep_status(args) -> int:
    from sweeps.layout import open_sweep
    from sweeps.status import format_status, sweep_status

    rows = sweep_status(open_sweep(args.name, args.storage))
    print(json.dumps(rows, indent=2, default=str) if args.json else format_status(rows))
    return 0


def _sweep_export(args) -> int:
    from sweeps.export import export_best
    from sweeps.layout import open_sweep

    for path in export_best(open_sweep(args.name, args.storage), args.out):
        print(f"written: {path}   (kdsweep train --config {path})")
    return 0


def _sweep_replicate(args) -> int:
    from sweeps.layout import open_sweep
    from sweeps.replicate import run_replicates

    sd = open_sweep(args.name, args.storage)
    run_replicates(sd, seeds=args.seeds, address=args.address)
    flag = f" --storage {args.storage}" if args.storage else ""
    print(f"replicates: {sd.root / 'replicates'}\nnext: kdsweep analyze {args.name}{flag}")
    return 0


def _analyze(args) -> int:
    from analysis.report import analyze, summary_lines
    from sweeps.layout import open_sweep

    print("\n".join(summary_lines(analyze(open_sweep(args.name, args.storage), args.out))))
    return 0


def _dashboard(args) -> int:
    from sweeps.dashboard import serve_dashboard
    from sweeps.layout import open_sweep

    return serve_dashboard(open_sweep(args.name, args.storage), port=args.port, print_only=args.print_only)


def _data_report(args) -> int:
    from distill.data_report import data_report, format_data_report

    report = data_report(args.data, identity=args.identity, coverage=args.coverage, column=args.column)
    print(json.dumps(report, indent=2) if args.json else format_data_report(report))
    return 0


STORAGE_HELP = "folder that holds sweeps (default: $KDSWEEP_STORAGE or ./kdsweep_runs)"
ADDRESS_HELP = "Ray cluster address (default: $RAY_ADDRESS, else an embedded local Ray)"


def _on_sweep(subparsers, command: str, help: str, func, *, ray: bool = False) -> argparse.ArgumentParser:
    """A subcommand that acts on an existing sweep: NAME, --storage (and --address if it starts Ray)."""
    p = subparsers.add_parser(command, help=help)
    p.add_argument("name", help="sweep name")
    p.add_argument("--storage", help=STORAGE_HELP)
    if ray:
        p.add_argument("--address", help=ADDRESS_HELP)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdsweep", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="run one distillation (demo teacher and bundled data by default)")
    t.add_argument("--config", help="YAML config (keys: see distill/config.py; a sweep export works unchanged)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config key (repeatable)")
    t.add_argument("--out", help="output directory (same as --set output_dir=...)")
    t.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="print and save every SPEC §5 metric of a student against a teacher")
    e.add_argument("--student", required=True, help="student directory (from `kdsweep train`)")
    e.add_argument("--teacher", required=True, help="teacher directory or hub id ('demo' = bundled demo teacher)")
    e.add_argument("--data", help="score every protein of this file (default: the bundled test split)")
    e.add_argument("--out", help="write the metrics as JSON here")
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.set_defaults(func=_evaluate)

    sw = sub.add_parser("sweep", help="Ray Tune + Optuna sweeps").add_subparsers(dest="sweep_command", required=True)
    r = sw.add_parser("run", help="start a sweep from a search-space YAML")
    r.add_argument("space", help="search-space YAML (or the name of one in search_spaces/, e.g. demo)")
    r.add_argument("--name", help="sweep name (default: the space's name)")
    r.add_argument("--storage", help=STORAGE_HELP)
    r.add_argument("--address", help=ADDRESS_HELP)
    r.add_argument("--smoke", action="store_true", help="smallest run that exercises every part")
    r.set_defaults(func=_sweep_run)
    _on_sweep(sw, "resume", "continue a sweep whose driver was killed", _sweep_resume, ray=True)
    _on_sweep(sw, "status", "trials by state and best val_ppl per (scale, arm)", _sweep_status).add_argument(
        "--json", action="store_true")
    _on_sweep(sw, "export", "write the best config of each (scale, arm) for `kdsweep train`", _sweep_export).add_argument(
        "--out", required=True)
    _on_sweep(sw, "replicate", "retrain each (scale, arm)'s best config with N seeds; test-split metrics",
              _sweep_replicate, ray=True).add_argument("--seeds", type=int, default=3)
    _on_sweep(sub, "analyze", "tables (md/csv/tex), plots, best configs and index.html of a sweep", _analyze).add_argument(
        "--out", help="output folder (default: <sweep>/analysis)")
    db = _on_sweep(sub, "dashboard", "serve optuna-dashboard for a sweep; print how to open Ray dashboard/TensorBoard",
                   _dashboard)
    db.add_argument("--port", type=int, default=8080)
    db.add_argument("--print-only", action="store_true", help="print the commands, serve nothing")

    dr = sub.add_parser("data", help="inspect a data file").add_subparsers(dest="data_command", required=True).add_parser(
        "report", help="split sizes and leakage (held-out 20-mers in train) of the hash and the cluster split")
    dr.add_argument("data", help="'bundled' or a data file (FASTA, parquet, datasets folder)")
    dr.add_argument("--identity", type=float, default=SplitSpec.identity, help="MMseqs2 --min-seq-id of the cluster split")
    dr.add_argument("--coverage", type=float, default=SplitSpec.coverage, help="MMseqs2 -c of the cluster split")
    dr.add_argument("--column", default="sequence", help="sequence column of a table")
    dr.add_argument("--json", action="store_true")
    dr.set_defaults(func=_data_report)

    d = sub.add_parser("demo-teacher", help="(re)build the bundled CPU demo teacher")
    d.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "distill" / "assets" / "demo-teacher"))
    d.add_argument("--steps", type=int, default=None, help="training steps (default: the committed teacher's)")
    d.set_defaults(func=_demo_teacher)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KDSweepError as e:
        print(f"kdsweep: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
