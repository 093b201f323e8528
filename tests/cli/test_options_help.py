"""`--help` is complete and true: every option of every subcommand has help text, a default is
said once (never "(default 1.0) (default: 1.0)"), on/off flags such as --quiet and --no-augment
show no stored default (their True is not what the flag does), no "(default: None)". Option
values that start with '-' reach the option's own check (`--mem-budget -5MB` is "negative", not
argparse's bare "expected one argument"); messages name the real options."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

import edge_trgl
from edge_trgl.cli.main import build_parser, join_dash_values, main


def all_parsers():
    stack = [("edge-trgl", build_parser())]
    while stack:
        name, parser = stack.pop()
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend((f"{name} {sub}", p) for sub, p in action.choices.items())


def option_help(parser, action) -> str:
    """The help text argparse prints for `action`, defaults expanded."""
    return " ".join(parser._get_formatter()._expand_help(action).split())


def test_every_option_of_every_command_has_help():
    missing = [f"{name}: {'/'.join(a.option_strings) or a.dest}"
               for name, parser in all_parsers() for a in parser._actions
               if not isinstance(a, argparse._SubParsersAction) and not (a.help or "").strip()]
    assert not missing, missing
    names = [name for name, _ in all_parsers()]
    for command in ("train", "plan", "export", "evaluate", "predict", "env", "bench"):
        assert f"edge-trgl {command}" in names


def test_defaults_are_shown_once_and_truthfully():
    checked = 0
    for name, parser in all_parsers():
        for action in parser._actions:
            if not action.help or isinstance(action, argparse._SubParsersAction):
                continue
            text = option_help(parser, action)
            where = f"{name} {'/'.join(action.option_strings) or action.dest}: {text}"
            assert text.lower().count("default") <= 1, where
            assert "(default: None)" not in text and "(default: )" not in text, where
            if action.nargs == 0:      # flags: store_true/store_false/help/version
                assert "(default:" not in text, where
            checked += 1
    assert checked > 60
    train = build_parser().subcommands["train"].format_help()
    flat = " ".join(train.split())
    assert "(default: True)" not in flat and "(default: False)" not in flat
    assert "--quiet no planning progress, no plan printout and no per-" in flat
    assert "(the summary table at the end is still printed) data:" in flat  # and no default
    assert "--no-augment no crop/flip augmentation (augmentation is on without this flag)" in flat
    assert "(default 1.0) (default: 1.0)" not in flat
    assert "--train-fraction F seeded class-balanced fraction of the train set to use " \
           "(default: 1.0)" in flat
    assert "--lr LR learning rate (the peak of a schedule) (default: 0.05)" in flat
    assert "--lr-schedule {constant,cosine,step}" in flat and "--warmup-epochs E" in flat


def test_help_of_every_command_prints(capsys):
    for name, _ in all_parsers():
        with pytest.raises(SystemExit) as exc:
            main([*name.split()[1:], "--help"])
        assert exc.value.code == 0
        assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("argv,phrase", [
    (["train", "--mem-budget", "-5MB"], "The memory budget '-5MB' is negative"),
    (["train", "--mem-budget=-5MB"], "The memory budget '-5MB' is negative"),
    (["plan", "--mem-budget", "-512MiB"], "The memory budget '-512MiB' is negative"),
    (["train", "--disk-budget", "-1GB"], "The disk budget '-1GB' is negative"),
    (["plan", "--disk-budget", "lots"], "The disk budget 'lots' is not a size I can read"),
    (["train", "--mem-budget", "0"], "must be larger than zero bytes"),
])
def test_negative_and_bad_sizes_get_a_clear_message_before_any_work(capsys, tmp_path, argv,
                                                                      phrase):
    out = tmp_path / "run"
    rc = main([*argv, "--out", str(out)] if argv[0] == "train" else argv)
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2, err
    assert phrase in err and "expected one argument" not in err, err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert not out.exists()


def test_dash_values_do_not_swallow_options():
    parser = build_parser()
    assert join_dash_values(parser, ["train", "--mem-budget", "-5MB", "--quiet"]) == \
        ["train", "--mem-budget=-5MB", "--quiet"]
    # a real option after a value option is left to argparse ("expected one argument")
    assert join_dash_values(parser, ["train", "--data-dir", "--quiet"]) == \
        ["train", "--data-dir", "--quiet"]
    assert join_dash_values(parser, ["train", "--tau", "-1"]) == ["train", "--tau=-1"]
    assert join_dash_values(parser, ["train", "--", "--mem-budget", "-5MB"]) == \
        ["train", "--", "--mem-budget", "-5MB"]
    assert join_dash_values(parser, ["train", "--quiet", "-K", "2"]) == \
        ["train", "--quiet", "-K", "2"]
    args = parser.parse_args(join_dash_values(parser, ["predict", "m.onnx", "x.npy", "--top",
                                                       "-2"]))
    assert args.images == ["x.npy"] and args.top == -2    # (refused by predict's own check)


def test_a_negative_tau_reaches_the_config_check(capsys, tmp_path):
    rc = main(["train", "--tau", "-1", "--out", str(tmp_path / "run")])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "--tau must be a positive number" in err, err


def test_messages_name_the_real_options():
    """The dataset option is --data; no message may suggest --dataset."""
    package = Path(edge_trgl.__file__).parent
    offenders = [f"{p.relative_to(package)}:{i}" for p in sorted(package.rglob("*.py"))
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"--dataset\b", line)]
    assert not offenders, offenders
    from edge_trgl.data import load_dataset
    from edge_trgl.errors import UserError
    with pytest.raises(UserError, match="e.g. --data synthetic"):
        load_dataset("imagenet")
    with pytest.raises(UserError, match="or use --data synthetic"):
        load_dataset("cifar10", None)
