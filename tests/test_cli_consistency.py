"""The bertlib commands speak alike: one help layout, --version, one spelling per switch (the old
spellings still work, hidden and deprecated), and bert-pretrain takes the data's own shape."""
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bertlib.cli.common import DefaultsFormatter

ROOT = Path(__file__).resolve().parents[1]
TOOLS = {  # console script -> module
    "bert-pretrain": "pretrain", "bert-make-pretraining-data": "make_pretraining_data",
    "bert-train-vocab": "train_vocab", "bert-validate-data": "validate_data",
    "bert-make-squad-data": "make_squad_data", "bert-squad": "squad",
    "bert-squad-evaluate": "squad_evaluate", "bert-squad-answer": "squad_answer",
    "bert-tensorboard": "tensorboard",
}
WITH_PROGRESS = ("bert-pretrain", "bert-make-pretraining-data", "bert-train-vocab", "bert-make-squad-data",
                 "bert-squad", "bert-validate-data")
WITH_LOWER_CASE = ("bert-make-pretraining-data", "bert-train-vocab", "bert-make-squad-data", "bert-squad",
                   "bert-squad-answer")


def parser_of(tool):
    return importlib.import_module(f"bertlib.cli.{TOOLS[tool]}").build_parser()


def visible_flags(parser) -> set[str]:
    import argparse

    return {s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


@pytest.mark.parametrize("tool", TOOLS)
def test_one_help_layout_and_a_version(tool, capsys):
    import bertlib

    parser = parser_of(tool)
    assert parser.prog == tool
    assert parser.formatter_class is DefaultsFormatter
    text = " ".join(parser.format_help().split())
    assert "(default: None)" not in text
    assert "--quiet" not in text and "--no_lower_case" not in text
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"{tool} {bertlib.__version__} (OneFlow 0.9.0, Python 3.")


def test_one_spelling_per_switch():
    for tool in TOOLS:
        flags = visible_flags(parser_of(tool))
        assert ("--no_progress" in flags) == (tool in WITH_PROGRESS), tool
        assert ("--do_lower_case" in flags) == (tool in WITH_LOWER_CASE), tool
        assert not flags & {"--quiet", "--no_lower_case", "--lower_case", "--progress"}, tool


@pytest.mark.parametrize("tool", ["bert-make-pretraining-data", "bert-train-vocab", "bert-make-squad-data"])
def test_old_spellings_still_work_and_say_so(tool, capsys):
    required = {"bert-make-pretraining-data": ["--output_dir", "o"],
                "bert-train-vocab": ["--input", "i", "--output_dir", "o"],
                "bert-make-squad-data": ["--input_file", "f", "--vocab_file", "v", "--output_dir", "o",
                                         "--eval"]}[tool]
    parser = parser_of(tool)
    args = parser.parse_args(required)
    assert args.do_lower_case is True and args.no_progress is False
    assert capsys.readouterr().err == ""
    args = parser.parse_args(required + ["--quiet", "--no_lower_case"])
    assert args.do_lower_case is False and args.no_progress is True
    err = capsys.readouterr().err.splitlines()
    assert err == [f"{tool}: --quiet is deprecated; use --no_progress",
                   f"{tool}: --no_lower_case is deprecated; use --do_lower_case false"]
    args = parser.parse_args(required + ["--do_lower_case", "false", "--no_progress"])
    assert args.do_lower_case is False and args.no_progress is True
    assert parser.parse_args(["--do_lower_case", *required]).do_lower_case is True


def test_squad_answer_lower_casing_stays_undecided_by_default():
    parser = parser_of("bert-squad-answer")
    base = ["--model_dir", "m", "--question", "q"]
    assert parser.parse_args(base).do_lower_case is None  # the model dir decides
    assert parser.parse_args(base + ["--do_lower_case", "false"]).do_lower_case is False


def test_console_scripts_print_their_version():
    bindir = Path(sys.executable).parent
    missing = [t for t in TOOLS if not (bindir / t).exists() and shutil.which(t) is None]
    if missing:
        pytest.skip(f"console scripts not installed ({', '.join(missing)}): pip install -e .")
    for tool in TOOLS:
        exe = bindir / tool if (bindir / tool).exists() else shutil.which(tool)
        proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.startswith(f"{tool} "), (tool, proc.stderr)


# ------------------------------------------------------------ bert-pretrain and bertlib_data.json
@pytest.fixture(scope="module")
def data_64():
    """Pre-training data of seq_length 64 and 10 predictions, as bertlib_data.json records."""
    from bertlib.resources import default_pretraining_data

    return default_pretraining_data(seq_length=64, max_predictions_per_seq=10)


def test_pretraining_takes_the_shape_and_vocab_the_data_records(data_64):
    from bertlib.tasks.pretraining import PretrainingOptions, prepare

    data_dir, vocab = data_64
    nowhere = dict(log_dir=None, model_save_dir=None)  # no run directory to claim
    opts = prepare(PretrainingOptions(data_dir=str(data_dir), iter_num=1, **nowhere)).options
    assert (opts.seq_length, opts.max_predictions_per_seq) == (64, 10)
    assert Path(opts.vocab_file).resolve() == Path(vocab).resolve()
    same = prepare(PretrainingOptions(data_dir=str(data_dir), seq_length=64, max_predictions_per_seq=10,
                                      iter_num=1, **nowhere)).options
    assert (same.seq_length, same.max_predictions_per_seq) == (64, 10)


def test_pretraining_without_a_record_keeps_the_old_defaults(data_64, tmp_path):
    """OFRecords made elsewhere (OneFlow-Benchmark's) have no bertlib_data.json: 128 / 20 as before."""
    from bertlib.tasks.pretraining import PretrainingOptions, _data_shape

    assert _data_shape(PretrainingOptions(), {}, tmp_path) == {"seq_length": 128,
                                                               "max_predictions_per_seq": 20}
    assert _data_shape(PretrainingOptions(seq_length=256), {}, tmp_path)["seq_length"] == 256


@pytest.mark.parametrize("flag, value, recorded", [("--seq_length", 128, 64),
                                                   ("--max_predictions_per_seq", 20, 10)])
def test_a_flag_the_data_contradicts_is_one_line_and_exit_2(data_64, flag, value, recorded, tmp_path):
    data_dir, _ = data_64
    proc = subprocess.run([sys.executable, "-m", "bertlib.cli.pretrain", "--data_dir", str(data_dir), flag,
                           str(value), "--device", "cpu", "--iter_num", "1", "--log_dir", str(tmp_path / "log"),
                           "--model_save_dir", str(tmp_path / "ckpt")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"bert-pretrain: error: {flag} {value} contradicts the data: ")
    assert f"{flag[2:]} {recorded} (bertlib_data.json); leave {flag} out" in proc.stderr
    assert "Running bert" not in proc.stdout


def test_every_console_script_is_checked_here():
    import re

    text = (ROOT / "pyproject.toml").read_text()
    scripts = dict(re.findall(r'^(bert-[\w-]+) = "bertlib\.cli\.(\w+):main"$', text, re.M))
    assert scripts == TOOLS
