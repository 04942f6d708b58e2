"""Command-line pieces shared by the commands that run as MPI ranks.

Every rank of ``mpiexec -n N python train_imagenet.py ...`` (or of
``python -m chainer_resnet.evaluate``) parses the same command line, so every
rank fails or stops the same way; :class:`Parser` lets rank 0 alone print the
usage, the help and the error (before MPI is initialised, the rank comes from
the launcher's variables: ``communication.process_rank``). The argument types
say what was wrong in argparse's own ``argument --x: ...`` line.
"""

import argparse

from chainer_resnet import communication


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage, help and errors rank 0 alone prints."""

    def _print_message(self, message, file=None):
        if communication.process_rank() == 0:
            super()._print_message(message, file)


def count(minimum):
    """The type of an integer argument ``>= minimum``."""
    def parse(text):
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError('must be an integer >= {}'.format(minimum))
        return value
    parse.__name__ = 'integer >= {}'.format(minimum)
    return parse


def device_name(text):
    """``--device``: 'cpu', 'gpu' (the node-local rank's GPU) or a GPU id."""
    if text in ('cpu', 'gpu') or text.isdigit():
        return text
    raise argparse.ArgumentTypeError("use 'cpu', 'gpu' or a GPU id")


def seconds(text):
    """A finite number of seconds >= 0 (0: never, for the limits that take it)."""
    value = float(text)
    if not 0 <= value < float('inf'):
        raise argparse.ArgumentTypeError('must be a number of seconds >= 0')
    return value


def positive_float(text):
    """A finite number > 0."""
    value = float(text)
    if not 0 < value < float('inf'):
        raise argparse.ArgumentTypeError('must be a positive number')
    return value
