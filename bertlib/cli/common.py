"""What every bertlib command shares: the parser (help that shows defaults only where they say
something, ``--version``), one spelling per switch (``--no_progress``, ``--do_lower_case``; the
old ``--quiet`` / ``--no_lower_case`` still work, hidden and deprecated), the device and node flags
of OneFlow-Benchmark's scripts, boolean flags, the config block, and the error -> exit code 2
wrapper."""
from __future__ import annotations

import argparse
import sys
import time

BANNER = "=" * 66
RULE = "-" * 66
# bad flags or inputs, found before anything runs: one line on stderr and exit code 2
BAD_INPUT = (ValueError, FileNotFoundError)


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Like ArgumentDefaultsHelpFormatter, minus "(default: None)" and the defaults of on/off flags."""

    def _get_help_string(self, action):
        if (action.default in (None, "") or "default" in (action.help or "")
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))):
            return action.help
        return super()._get_help_string(action)


def version_text(prog: str) -> str:
    """``bert-x 0.1.0 (OneFlow 0.9.0, Python 3.10.13)``, without importing OneFlow (seconds)."""
    import platform
    from importlib import metadata

    from .. import __version__

    try:
        oneflow = metadata.version("oneflow")
    except metadata.PackageNotFoundError:
        oneflow = "not installed"
    return f"{prog} {__version__} (OneFlow {oneflow}, Python {platform.python_version()})"


def make_parser(prog: str, description: str, **kwargs) -> argparse.ArgumentParser:
    """The parser of every bertlib command: the same help layout and a ``--version``."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=DefaultsFormatter, **kwargs)
    parser.add_argument("--version", action="version", version=version_text(prog),
                        help="print the bertlib, OneFlow and Python versions and exit")
    return parser


class _DeprecatedSwitch(argparse.Action):
    """An old spelling kept so existing commands still run: sets ``const``, says what replaced it."""

    def __init__(self, option_strings, dest, const=None, replacement="", **kwargs):
        super().__init__(option_strings, dest, nargs=0, const=const, **kwargs)
        self.replacement = replacement

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: {option_string} is deprecated; use {self.replacement}",
              file=sys.stderr, flush=True)
        setattr(namespace, self.dest, self.const)


def add_progress_flag(group, help: str = "no progress bars"):
    """``--no_progress`` (``args.no_progress``); ``--quiet`` is its deprecated spelling."""
    group.add_argument("--no_progress", action="store_true", help=help)
    group.add_argument("--quiet", dest="no_progress", action=_DeprecatedSwitch, const=True,
                       replacement="--no_progress", help=argparse.SUPPRESS)


def add_lower_case_flag(group, help: str, default: bool | None = True):
    """``--do_lower_case [true|false]`` (``args.do_lower_case``), the flag of OneFlow-Benchmark's
    run_squad.py and the field of Hugging Face's tokenizer_config.json; ``--no_lower_case`` is
    the deprecated spelling of ``--do_lower_case false``."""
    add_bool_flag(group, "do_lower_case", default, help)
    group.add_argument("--no_lower_case", dest="do_lower_case", action=_DeprecatedSwitch, const=False,
                       replacement="--do_lower_case false", help=argparse.SUPPRESS)


def str2bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if value.lower() in ("0", "false", "no", "n", "off", "none"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def add_bool_flag(group, name: str, default: bool, help: str):
    """``--name``, ``--name true`` and ``--name false`` all work, as in OneFlow-Benchmark's scripts."""
    group.add_argument(f"--{name}", type=str2bool, nargs="?", const=True, default=default, help=help)


def add_step_flags(group):
    """--mode and --use_fp16: how a training step runs (bert-pretrain and bert-squad)."""
    group.add_argument("--mode", choices=("eager", "graph"), default="eager",
                       help="eager Python steps, or a compiled OneFlow nn.Graph")
    add_bool_flag(group, "use_fp16", False,
                  "mixed precision with dynamic loss scaling (CUDA only; implies --mode graph)")


def add_launch_flags(parser: argparse.ArgumentParser):
    """--gpu_num_per_node, --node_num, --node_list (OneFlow-Benchmark's), --device and --master_port."""
    g = parser.add_argument_group("devices and nodes (OneFlow-Benchmark's flags)")
    g.add_argument("--gpu_num_per_node", type=int, default=1,
                   help="processes per node, one per GPU (with --device cpu: CPU processes)")
    g.add_argument("--node_num", type=int, default=1, help="number of machines")
    g.add_argument("--node_list", default=None,
                   help="comma-separated hosts when node_num > 1; the first is the master")
    g.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto = cuda when OneFlow sees a GPU, else cpu")
    g.add_argument("--master_port", type=int, default=None,
                   help="rank 0's port (default: a free port on one node, 29500 on several)")
    return g


def check_launch_flags(args):
    for name in ("gpu_num_per_node", "node_num"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1 (got {getattr(args, name)})")


def launch_kwargs(args) -> dict:
    """The launch flags as the tasks' ``launch(...)`` takes them (the CLI's ranks share its stdout)."""
    return dict(nproc_per_node=args.gpu_num_per_node, node_num=args.node_num,
                node_list=args.node_list, master_port=args.master_port, relay_stdout=False)


def options_from_args(options_class, args, **overrides):
    """A task's options dataclass from the parsed flags of the same names."""
    from dataclasses import fields

    values = {f.name: getattr(args, f.name) for f in fields(options_class) if hasattr(args, f.name)}
    if hasattr(args, "no_progress"):
        values["progress"] = not args.no_progress
    return options_class(**{**values, **overrides})


def is_first_node(args) -> bool:
    """The config block is printed once per job: by the master machine's command."""
    from ..launch import node_rank_from_list

    return node_rank_from_list(args.node_list, args.node_num)[0] == 0


def print_config_block(settings: dict, num_nodes: int, gpus_per_node: int):
    """Every setting of the run, as OneFlow-Benchmark's scripts print them before training."""
    print(BANNER)
    print(f"Running bert: num_gpu_per_node = {gpus_per_node}, num_nodes = {num_nodes}.")
    print(BANNER)
    for key, value in settings.items():
        print(f"{key} = {'' if value is None and key == 'model_load_dir' else value}")
    print(RULE)
    print(f"Time stamp: {time.strftime('%Y-%m-%d-%H:%M:%S', time.localtime())}", flush=True)


def run_cli(prog: str, body, *args, bad_input: tuple = BAD_INPUT) -> int:
    """``body(*args)`` -> its exit code (None: 0); ``bad_input`` -> ``prog: error: ...`` and 2.

    A failing rank of a launched job is not bad input: the task raises LaunchError (a
    RuntimeError) and the launcher's exit code is returned.
    """
    from ..tasks._ranks import LaunchError

    try:
        code = body(*args)
    except LaunchError as exc:
        return exc.returncode
    except bad_input as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    return 0 if code is None else code
