"""Argument checks shared by the data modules."""

import numpy


def check_size(name, value):
    """Return ``value`` as an ``int``; ValueError unless it is a positive integer."""
    if int(value) != value or value < 1:
        raise ValueError(
            '{} must be a positive integer, got {!r}'.format(name, value))
    return int(value)


def describe(value):
    """A short description of ``value`` for error messages."""
    if isinstance(value, numpy.ndarray):
        return 'array of shape {} and dtype {}'.format(value.shape,
                                                       value.dtype)
    return type(value).__name__
