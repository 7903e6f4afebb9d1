"""argparse help that shows defaults only where they say something."""
import argparse


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Like ArgumentDefaultsHelpFormatter, minus "(default: None)" and the defaults of on/off flags."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return action.help
        return super()._get_help_string(action)
