"""`kdsweep` command line: a flat table of commands, each a thin handler over a library function.

Every layer (`distill`, `sweeps`, `analysis`) sits below this module and none imports
it. Handlers import their library lazily, so `kdsweep sweep status` never loads Ray
or torch's training stack. Errors caused by input (bad config, data, model paths)
print one message and exit 2; nothing is half-written because the libraries
validate before they write. Ctrl-C prints how to resume and exits 130.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import kdsweep.distill as distill_package
from kdsweep.distill.data.splits import SplitSpec
from kdsweep.distill.errors import ConfigError, KDSweepError
from kdsweep.distill.files.diskfull import DiskFull, full_disk_in
from kdsweep.sweeps.environment import configure
from kdsweep import __version__

DESCRIPTION = ("Systematic hyperparameter sweeps for knowledge distillation of protein language models "
               "(ProtGPT2 -> small GPT-2 students), on Ray Tune + Optuna.")
WORKFLOW = """typical workflow:
  kdsweep sweep run search_spaces/demo.yaml      # search: one Optuna study per (scale, arm)
  kdsweep sweep status demo                      # trials by state, best objective per study
  kdsweep dashboard demo                         # watch it: optuna-dashboard (+ --tensorboard)
  kdsweep sweep replicate demo --seeds 3         # retrain each study's best config with new seeds
  kdsweep analyze demo                           # tables, plots, index.html
  kdsweep sweep export demo --out best/ --students  # a train config + a from_pretrained student per (scale, arm)
a sweep builds its teacher cache before its trials; `kdsweep cache build SPACE.yaml` builds it ahead
"""
STORAGE_HELP = "folder that holds sweeps (default: $KDSWEEP_STORAGE, else ./kdsweep_runs)"
ADDRESS_HELP = "Ray cluster address (default: $RAY_ADDRESS, else an embedded local Ray)"


def arg(*flags: str, **kwargs) -> tuple[tuple[str, ...], dict]:
    return flags, kwargs


NAME = arg("name", help="sweep name (a folder under --storage)")
STORAGE = arg("--storage", help=STORAGE_HELP)
ADDRESS = arg("--address", help=ADDRESS_HELP)
TRACKER = arg("--tracker", choices=["mlflow", "wandb", "none"],
              help="experiment tracker, one run per trial (default: the space's tracking.tracker, else none); "
                   "needs pip install \"kdsweep[mlflow]\" or \"kdsweep[wandb]\"")


@dataclass(frozen=True)
class Command:
    handler: Callable[[argparse.Namespace], int]
    help: str
    args: list = field(default_factory=list)
    # What Ctrl-C should tell the user (None: nothing to resume).
    resume_hint: Callable[[argparse.Namespace], str] | None = None
    # Text after the options in the command's --help, made only when the help is shown.
    epilog: Callable[[], str] | None = None


# ---------------------------------------------------------------------------------------------
# Handlers: parse -> one library call -> print
# ---------------------------------------------------------------------------------------------


def _train(args) -> int:
    from kdsweep.distill.config import load_config
    from kdsweep.distill.inputs import check_inputs, check_writable_dir
    from kdsweep.distill.run.evaluate import headline
    from kdsweep.distill.run.rerun import clear_run
    from kdsweep.distill.run.rundir import COMPLETED, STUDENT_DIR, SUMMARY_NAME
    from kdsweep.distill.run.train import run_training

    overrides = list(args.set or [])
    if args.out:
        if any(pair.partition("=")[0].strip() == "output_dir" for pair in overrides):
            raise ConfigError("--out and --set output_dir=... both name the output folder; give one of them")
        overrides.append(f"output_dir={args.out}")
    cfg = load_config(args.config, overrides)
    check_writable_dir(cfg.output_dir, "output_dir (--out)")
    if args.restart:
        check_inputs(cfg)  # the old run is deleted only for a new one that can start
        clear_run(cfg.output_dir)
    result = run_training(cfg)
    final = f"objective (final model's val_ppl) {result.val_ppl:.4f}; " if result.val_ppl is not None else ""
    print(f"status: {result.status} at step {result.step}; {final}min val_ppl seen {result.best_val_ppl:.4f} "
          f"(step {result.best_step})")
    if result.final_metrics:
        print("test split: " + headline(result.final_metrics))
    print(f"student: {result.run_dir / STUDENT_DIR}\nmetrics: {result.run_dir / SUMMARY_NAME}")
    return 0 if result.status == COMPLETED else 1


def _evaluate(args) -> int:
    from kdsweep.distill.files.atomic import write_atomic
    from kdsweep.distill.files.numbers import dumps
    from kdsweep.distill.inputs import check_writable_file
    from kdsweep.distill.run.evaluate import evaluate_dirs, headline

    if args.out:
        check_writable_file(args.out, "--out")  # before the work, not after it
    metrics = evaluate_dirs(args.student, args.teacher, data=args.data, device=args.device)
    print(dumps(metrics, indent=2))
    print(headline(metrics))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.out, dumps(metrics, indent=2) + "\n")
        print(f"written: {args.out}")
    return 0


def _demo_teacher(args) -> int:
    from kdsweep.distill.inputs import check_writable_dir
    from kdsweep.distill.teacher.demo import build_demo_teacher

    check_writable_dir(args.out, "--out")  # before an hour of training, not after it
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps: got {args.steps}, allowed: an integer >= 1")
    build_demo_teacher(args.out, **({"steps": args.steps} if args.steps else {}))
    return 0


def _sweep_run(args) -> int:
    from kdsweep.sweeps.space import load_space, smoke_space, with_search_replicates, with_tracker
    from kdsweep.sweeps.textfit import output_width

    # validated before Ray is even imported
    space = with_search_replicates(with_tracker(load_space(args.space), args.tracker), args.search_replicates)
    if args.smoke:
        space = smoke_space(space)
    if args.name is None:
        args.name = space.name  # what the Ctrl-C hint names

    from kdsweep.sweeps.runner import next_steps, run_sweep
    from kdsweep.sweeps.status import format_status, sweep_status

    sd = run_sweep(space, name=args.name, storage=args.storage, address=args.address,
                   warm_start_from=args.warm_start_from)
    print(format_status(sweep_status(sd), output_width()))
    print(next_steps(sd, args.storage, output_width()))
    return 0


def _sweep_resume(args) -> int:
    from kdsweep.sweeps.runner import next_steps, resume_sweep
    from kdsweep.sweeps.status import format_status, sweep_status
    from kdsweep.sweeps.textfit import output_width

    sd = resume_sweep(args.name, storage=args.storage, address=args.address)
    print(format_status(sweep_status(sd), output_width()))
    print(next_steps(sd, args.storage, output_width()))
    return 0


def _sweep_status(args) -> int:
    from kdsweep.distill.files.numbers import dumps
    from kdsweep.sweeps.layout import open_sweep
    from kdsweep.sweeps.status import format_status, sweep_status
    from kdsweep.sweeps.textfit import output_width

    rows = sweep_status(open_sweep(args.name, args.storage))
    print(dumps(rows, indent=2) if args.json else format_status(rows, output_width()))
    return 0


def _sweep_list(args) -> int:
    import dataclasses

    from kdsweep.distill.files.numbers import dumps
    from kdsweep.sweeps.layout import storage_root
    from kdsweep.sweeps.status import format_sweep_list, list_sweeps
    from kdsweep.sweeps.textfit import output_width

    root = storage_root(args.storage)
    summaries = list_sweeps(root)
    print(dumps([dataclasses.asdict(s) for s in summaries], indent=2) if args.json
          else format_sweep_list(summaries, root, output_width()))
    return 0


def _sweep_export(args) -> int:
    from kdsweep.distill.inputs import check_writable_dir
    from kdsweep.sweeps.export import export
    from kdsweep.sweeps.layout import open_sweep

    check_writable_dir(args.out, "--out")
    for path in export(open_sweep(args.name, args.storage), args.out, students=args.students):
        print(f"written: {path}   " + (f"(from_pretrained; model card {path / 'README.md'})" if path.is_dir()
                                      else f"(kdsweep train --config {path})"))
    return 0


def _sweep_replicate(args) -> int:
    from kdsweep.sweeps.layout import open_sweep
    from kdsweep.sweeps.replicate import run_replicates
    from kdsweep.sweeps.space import load_space, with_tracker
    from kdsweep.sweeps.textfit import command_lines, kdsweep_command, output_width
    from kdsweep.sweeps.tracking import tracker_hint

    sd = open_sweep(args.name, args.storage)
    run_replicates(sd, seeds=args.seeds, address=args.address, tracker=args.tracker, ablations=args.ablations)
    flag = f" --storage {args.storage}" if args.storage else ""
    hint = tracker_hint(with_tracker(load_space(sd.space), args.tracker).tracking, sd)
    commands = [(f"{kdsweep_command()} analyze {args.name}{flag}", "tables, plots and index.html")] + ([hint] if hint else [])
    print("\n".join([f"replicates: {sd.replicates}", "next:", *command_lines(commands, output_width())]))
    return 0


def _analyze(args) -> int:
    from kdsweep.analysis.report import analyze, summary_lines
    from kdsweep.distill.inputs import check_writable_dir
    from kdsweep.sweeps.layout import open_sweep

    sd = open_sweep(args.name, args.storage)
    check_writable_dir(args.out or sd.analysis, "--out")
    print("\n".join(summary_lines(analyze(sd, args.out))))
    return 0


def _dashboard(args) -> int:
    from kdsweep.sweeps.dashboard import check_ports, serve_dashboard
    from kdsweep.sweeps.layout import open_sweep

    check_ports(args.port, args.tensorboard_port if args.tensorboard else None)
    return serve_dashboard(open_sweep(args.name, args.storage), port=args.port, print_only=args.print_only,
                           tensorboard_port=args.tensorboard_port if args.tensorboard else None, verbose=args.verbose)


def _data_report(args) -> int:
    from kdsweep.distill.files.numbers import dumps
    from kdsweep.distill.run.data_report import data_report, format_data_report

    report = data_report(args.data, identity=args.identity, coverage=args.coverage, column=args.column,
                         teacher_train=args.teacher_train)
    print(dumps(report, indent=2) if args.json else format_data_report(report))
    return 0


def _cache_build(args) -> int:
    from kdsweep.distill.teacher.cache import build_teacher_cache
    from kdsweep.sweeps.cache import check_cache_dir, plan_space_cache
    from kdsweep.sweeps.layout import storage_root
    from kdsweep.sweeps.preflight import check_inputs_of_space
    from kdsweep.sweeps.space import load_space, smoke_space

    space = load_space(args.space)
    if args.smoke:
        space = smoke_space(space)
    if not space.cache["enabled"]:
        print(f"note: {args.space} has cache.enabled: false; its sweeps run the live teacher and will not read this")
    root = storage_root(args.storage)
    check_inputs_of_space(space, root)  # data, teacher, sizes, --storage: before any work
    check_cache_dir(space, root)
    path = build_teacher_cache(plan_space_cache(space, root))
    print(f"teacher cache: {path}\n  sweeps of this space read it; for one run: kdsweep train --set teacher_cache={path}")
    return 0


def _cache_build_hint(args) -> str:
    return "interrupted; run the same command again to resume the build (finished shards are kept)"


def _estimate(args) -> int:
    from kdsweep.distill.files.numbers import dumps
    from kdsweep.sweeps.estimate import estimate, format_estimate
    from kdsweep.sweeps.space import load_space

    est = estimate(load_space(args.space), tokens_per_s=args.tokens_per_s, device=args.device, devices=args.devices,
                   storage=args.storage)
    print(dumps(est.to_dict(), indent=2) if args.json else format_estimate(est))
    return 0


def _config_reference() -> str:
    from kdsweep.distill.config import config_reference  # imports torch: only for `train --help`

    return config_reference()


def _train_resume_hint(args) -> str:
    out = args.out or "the same --out"
    return f"interrupted; run the same command again to resume {out} from its last checkpoint"


def _sweep_resume_hint(args) -> str:
    flag = f" --storage {args.storage}" if args.storage else ""
    name = getattr(args, "name", None) or "NAME"
    from kdsweep.sweeps.textfit import kdsweep_command

    return f"interrupted; continue with: {kdsweep_command()} sweep resume {name}{flag}"


# ---------------------------------------------------------------------------------------------
# The command table
# ---------------------------------------------------------------------------------------------

COMMANDS: dict[str, Command] = {
    "train": Command(_train, "run one distillation (demo teacher, bundled data and demo-s student by default)", [
        arg("--config", help="YAML config (every key: listed below; a `sweep export` file works unchanged; "
                             "default: every key at its default)"),
        arg("--set", action="append", metavar="KEY=VALUE", help="override one config key (repeatable; default: none)"),
        arg("--out", help="output directory (same as --set output_dir=...; default: runs/train)"),
        arg("--restart", action="store_true",
            help="delete the run already in the output directory (checkpoints, log, summary, student) and start over"),
    ], _train_resume_hint, _config_reference),
    "evaluate": Command(_evaluate, "every held-out metric of a saved student against a teacher", [
        arg("--student", required=True, help="student directory (`student/` of a `kdsweep train` run)"),
        arg("--teacher", required=True, help="teacher directory or hub id ('demo' = the bundled demo teacher)"),
        arg("--data", help="score every protein of this file (default: the bundled test split)"),
        arg("--out", help="also write the metrics as JSON to this file (default: print only)"),
        arg("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run"),
    ]),
    "estimate": Command(_estimate, "what a sweep will cost (trials, tokens, trial-steps after ASHA, teacher cache, "
                        "device-hours), from a short probe on this device; launches nothing", [
        arg("space", help="search-space YAML, or the name of one in search_spaces/ (e.g. demo)"),
        arg("--tokens-per-s", action="append", metavar="[SCALE=]N",
            help="a live-teacher trial's training tokens/s instead of the probe, for every scale or one "
                 "(repeatable); split into teacher and student by FLOPs (default: measured by the probe)"),
        arg("--device", default="auto", choices=["auto", "cpu", "cuda"], help="device to probe"),
        arg("--devices", type=int, help="GPUs (or CPU cores) the sweep will have, for the wall-clock figure "
                                        "(default: this machine's)"),
        arg("--storage", help="folder the sweep will be stored in, whose write speed prices the checkpoints "
                              "(default: $KDSWEEP_STORAGE, else ./kdsweep_runs)"),
        arg("--json", action="store_true", help="print JSON instead of a table")]),
    "sweep run": Command(_sweep_run, "start a sweep from a search-space YAML", [
        arg("space", help="search-space YAML, or the name of one in search_spaces/ (e.g. demo)"),
        arg("--name", help="sweep name (default: the space's name)"),
        STORAGE, ADDRESS, TRACKER,
        arg("--smoke", action="store_true", help="smallest run that exercises every part (one scale, 16 steps)"),
        arg("--search-replicates", type=int, default=None, metavar="R",
            help="independent searches per (scale, arm), each with its own seeds (default: the space's "
                 "search.search_replicates, 1): R > 1 puts search noise in the tuned-vs-tuned verdicts"),
        arg("--warm-start-from", metavar="SWEEP",
            help="an earlier sweep (same --storage) whose best configs of each arm each study tries first, lr "
                 "rescaled by width and unscaled (docs/method.md, warm start; default: none, or the space's "
                 "search.warm_start)"),
    ], _sweep_resume_hint),
    "sweep resume": Command(_sweep_resume, "continue a sweep whose driver was killed or interrupted",
                            [NAME, STORAGE, ADDRESS], _sweep_resume_hint),
    "sweep status": Command(_sweep_status, "trials by state and the best trial's objective per (scale, arm)", [
        NAME, STORAGE, arg("--json", action="store_true", help="print JSON instead of a table")]),
    "sweep list": Command(_sweep_list, "every sweep under --storage: created, studies, trials by state, the best "
                          "objective per scale", [
        STORAGE, arg("--json", action="store_true", help="print JSON instead of a table")]),
    "sweep export": Command(_sweep_export, "write the best config of each (scale, arm) for `kdsweep train` "
                            "(and, with --students, each chosen student with a model card)", [
        NAME, STORAGE, arg("--out", required=True, help="folder (outside the sweep) to write <scale>__<arm>.yaml "
                                                       "into; each config's run writes <out>/<scale>_<arm>/final"),
        arg("--students", action="store_true",
            help="also copy each (scale, arm)'s student into <out>/<scale>_<arm>/ (from_pretrained loads it) with "
                 "a model card: the replicate seed with the lowest val ppl_ratio, else the best search trial")]),
    "sweep replicate": Command(_sweep_replicate, "retrain each (scale, arm)'s best config with N new seeds, and "
                               "each enhanced one with each enhancement switched off (matched ablation)", [
        NAME, STORAGE, ADDRESS, TRACKER, arg("--seeds", type=int, default=3, help="replicates per (scale, arm)"),
        arg("--no-ablations", dest="ablations", action="store_false",
            help="skip the matched ablations (each enhanced arm's best config retrained with each of its "
                 "enhancements switched off, same seeds): no 'enhancement on vs off' table")],
        _sweep_resume_hint),
    "cache build": Command(_cache_build, "build a space's teacher cache (resumable; sweeps also build it at start)", [
        arg("space", help="search-space YAML, or the name of one in search_spaces/ (e.g. demo)"),
        STORAGE,
        arg("--smoke", action="store_true", help="the cache of the space's --smoke sweep")],
        _cache_build_hint),
    "analyze": Command(_analyze, "tables (md/csv/tex), plots, configs and index.html of a sweep", [
        NAME, STORAGE, arg("--out", help="output folder (default: <sweep>/analysis)")]),
    "dashboard": Command(_dashboard, "serve optuna-dashboard (and TensorBoard) for a sweep on 127.0.0.1", [
        NAME, STORAGE, arg("--port", type=int, default=8080, help="optuna-dashboard port on 127.0.0.1"),
        arg("--tensorboard", action="store_true", help="also serve TensorBoard on the sweep's runs"),
        arg("--tensorboard-port", type=int, default=6006, help="TensorBoard port on 127.0.0.1"),
        arg("--print-only", action="store_true", help="print the commands, serve nothing"),
        arg("--verbose", action="store_true", help="also print every HTTP request the servers answer")]),
    "data report": Command(_data_report, "split sizes, near-duplicate leakage at 20-mers and the 8-mer share (a "
                           "remote-homology indicator) of the hash and the cluster split of a data file", [
        arg("data", help="'bundled' or a data file (FASTA, parquet, datasets folder)"),
        arg("--identity", type=float, default=SplitSpec.identity, help="MMseqs2 --min-seq-id of the cluster split"),
        arg("--coverage", type=float, default=SplitSpec.coverage, help="MMseqs2 -c of the cluster split"),
        arg("--column", default="sequence", help="sequence column of a table"),
        arg("--teacher-train", default=None, metavar="FILE|demo",
            help="the teacher's training data (sequence file, ID list .txt, or 'demo'): report how many val/test "
                 "proteins it saw (default: not reported)"),
        arg("--json", action="store_true", help="print JSON instead of a table")]),
    "demo-teacher": Command(_demo_teacher, "(re)build the bundled CPU demo teacher (under an hour on 2 cores)", [
        arg("--out", default=str(Path(distill_package.__file__).resolve().parent / "assets" / "demo-teacher"),
            help="output folder"),
        arg("--steps", type=int, default=None, help="training steps (default: the committed teacher's)")]),
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be a function, called when the help is shown (the train
    command's, every config key, comes from distill.config, which takes seconds to import)."""

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps the workflow epilog's line breaks. A help text that
    says its default itself (what an unset option means) is left as written, and so is a flag's."""

    def _get_help_string(self, action):
        if "default" in (action.help or "") or action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kdsweep", description=DESCRIPTION, epilog=WORKFLOW, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"kdsweep {__version__}")
    groups: dict[str, argparse._SubParsersAction] = {"": parser.add_subparsers(dest="command", required=True,
                                                                               metavar="COMMAND")}
    for path, cmd in COMMANDS.items():
        *parents, leaf = path.split()
        prefix = ""
        for part in parents:  # e.g. "sweep" of "sweep run": a group parser made once
            key = f"{prefix} {part}".strip()
            if key not in groups:
                group = groups[prefix].add_parser(part, help=f"{part} commands", formatter_class=_HelpFormatter)
                groups[key] = group.add_subparsers(dest=f"{key}_command", required=True, metavar="COMMAND")
            prefix = key
        sub = groups[prefix].add_parser(leaf, help=cmd.help, description=cmd.help, epilog=cmd.epilog,
                                        formatter_class=_HelpFormatter)
        for flags, kwargs in cmd.args:
            sub.add_argument(*flags, **kwargs)
        sub.set_defaults(command_=cmd)
    return parser


def _thread_excepthook(args) -> None:
    """A full disk kills library threads too (TensorBoard's event writer): their tracebacks would bury
    the one line the main thread prints about it (which path is full), so they stay silent."""
    if full_disk_in(args.exc_value) is None:
        threading.__excepthook__(args)


def main(argv: list[str] | None = None) -> int:
    threading.excepthook = _thread_excepthook
    configure()  # Ray's console settings, before any handler imports Ray
    try:
        try:
            return _dispatch(argv)
        finally:
            sys.stdout.flush()  # a closed pipe surfaces here rather than in the interpreter's exit flush
    except BrokenPipeError:
        # Output piped into `head` and closed: not an error. Point stdout at devnull so the
        # interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _dispatch(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    cmd: Command = args.command_
    try:
        return cmd.handler(args)
    except KDSweepError as e:
        print(f"kdsweep: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)  # 2: bad input; 1: a run that cannot succeed (sweeps.failfast)
    except KeyboardInterrupt:
        hint = cmd.resume_hint(args) if cmd.resume_hint else "interrupted"
        print(f"\nkdsweep: {hint}", file=sys.stderr)
        return 130
    except Exception as e:  # a full disk, however deep a library wrapped it (SQLite, Ray, torch)
        full = full_disk_in(e)
        if full is None:
            raise
        # Every file is written atomically (temp file + rename) or append-only, so what is on disk
        # is whole: free space and run the same command again.
        where = full.filename or "a file"
        message = str(full) if isinstance(full, DiskFull) else (
            f"no space left on the device writing {where}; nothing was left half-written: free space, then run "
            "the same command again to resume")
        print(f"kdsweep: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
