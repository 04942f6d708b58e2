"""chainer_resnet.evaluator: what one batch adds to the exact evaluation.

The evaluator across ranks (each image once) is tested in tests/test_distributed.py.
"""

import numpy

from chainer_resnet.evaluator import _batch_sums


def test_batch_sums_count_nan_rows_and_ties_as_wrong():
    labels = numpy.array([0, 1, 2, 0], dtype=numpy.int32)
    logits = numpy.array([
        [3.0, 1.0, 0.0, 0.0, 0.0, 0.0],      # right
        [numpy.nan] * 6,                     # diverged: wrong, not "nothing scores higher"
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],      # all tied: wrong in the top 1 and the top 5
        [0.0, numpy.inf, 5.0, 0.0, 0.0, 0.0],  # a non-finite row is wrong
    ], dtype=numpy.float32)
    _, top1, top5, count = _batch_sums(logits, labels)
    assert (top1, top5, count) == (1, 1, 4)
    # Negative control: the same logits, made finite and untied, are all right in the top 5.
    clean = numpy.array([[3, 1, 0, 0, 0, 0], [0, 3, 1, 0, 0, 0], [0, 1, 2, 3, 4, 5],
                         [9, 0, 5, 0, 0, 0]], dtype=numpy.float32)
    _, top1, top5, _ = _batch_sums(clean, labels)
    assert (top1, top5) == (3, 4)
