"""The command line explains itself: help and defaults for every option, the workflow, --version,
and output piped into `head` ends quietly."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib.metadata import version

import pytest

from kdsweep.cli import COMMANDS, build_parser, main
from tests.fixtures import write_finished_sweep


def _command_parsers() -> dict[str, argparse.ArgumentParser]:
    """{"sweep run": its parser, ...} for every command of the table."""
    found = {}

    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{prefix} {name}".strip())
        if prefix in COMMANDS:
            found[prefix] = parser

    walk(build_parser(), "")
    return found


def test_every_command_of_the_table_has_a_parser():
    assert sorted(_command_parsers()) == sorted(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help_and_its_default(command):
    parser = _command_parsers()[command]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), f"{command} {action.dest}: no help text"
        entry = " ".join(parser._get_formatter()._format_action(action).split())  # as --help renders it
        if action.option_strings and action.nargs != 0 and not action.required:
            # An option that takes a value says what it is when not given.
            assert "default" in entry, f"{command}: {entry!r} does not give its default"
        assert "(default: None)" not in entry and "(default: False)" not in entry, entry


def test_top_level_help_shows_the_workflow_in_order(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    steps = [line.split("#")[0].split()[1:3] for line in out.splitlines() if line.strip().startswith("kdsweep ")]
    assert [" ".join(s).removeprefix("sweep ").split()[0] for s in steps] == [
        "run", "status", "dashboard", "replicate", "analyze", "export"]


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"kdsweep {version('kdsweep')}"


@pytest.mark.parametrize("args", [["sweep", "status", "norays"], ["--help"]], ids=["status", "help"])
def test_output_into_a_closed_pipe_ends_without_a_traceback(tmp_path, args):
    """`kdsweep ... | head -1`: the reader is gone before kdsweep writes (it closes at once here)."""
    write_finished_sweep(tmp_path)
    p = subprocess.Popen([sys.executable, "-m", "kdsweep", *args, *(["--storage", str(tmp_path)] if "sweep" in args else [])],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # `head` has read its line and exited
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_train_help_lists_every_config_key_with_its_default_and_documentation(capsys):
    """`kdsweep train --help` ends with every TrainConfig key: its default as YAML writes it, what it
    allows, and its attribute docstring (distill.config.config_reference: one source)."""
    import dataclasses

    import yaml

    from kdsweep.distill.config import TrainConfig, field_docs

    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    entries = dict(re.findall(r"^  (\w+) \(default: (.*?); allowed: .+\)$", out, flags=re.M))
    fields = dataclasses.fields(TrainConfig)
    assert list(entries) == [f.name for f in fields]
    defaults = TrainConfig().to_dict()
    for name, shown in entries.items():
        assert yaml.safe_load(shown) == defaults[name], name  # the printed default reads back as the default
    docs = field_docs()
    assert sorted(docs) == sorted(entries)  # every field documented, by a string right after it
    for name, doc in docs.items():
        assert len(doc) > 15, name
        assert doc.split()[0] in out.split(f"  {name} (default: ")[1], name  # its text follows its entry
