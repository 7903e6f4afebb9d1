"""Shared argparse pieces: help that shows defaults only where they say something, and the seed's
device and node flags that every launching command takes."""
import argparse


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Like ArgumentDefaultsHelpFormatter, minus "(default: None)" and the defaults of on/off flags."""

    def _get_help_string(self, action):
        if (action.default in (None, "") or "default" in (action.help or "")
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))):
            return action.help
        return super()._get_help_string(action)


def add_launch_flags(parser: argparse.ArgumentParser):
    """--gpu_num_per_node, --node_num, --node_list (the seed's), --device and --master_port."""
    g = parser.add_argument_group("devices and nodes (the seed's flags)")
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
