"""Exact evaluation over ranks: :class:`ExactEvaluator`.

Top-1/top-5 accuracy and loss over the whole validation set, each image
counted exactly once whatever the world size (no padding with duplicates).
"""

import numpy

import chainer
import chainer.functions as F
from chainer.dataset import convert
from chainer.training import extensions as chainer_extensions

from chainer_resnet import communication
from chainer_resnet.data.layouts import DatasetError


class ExactEvaluator(chainer_extensions.Evaluator):
    """Top-1/top-5 accuracy and loss over a validation set split across ranks.

    Each rank evaluates its own, disjoint part of the validation set (no
    padding with duplicates) and the sums of correct predictions, loss and
    image counts are added over ranks, so every image counts exactly once.
    Reports ``validation/main/{loss,accuracy,top5,images}`` on every rank.
    A rank whose images fail (more unreadable ones than allowed) stops
    reading; every rank then raises that error together, said once by rank 0.
    """

    default_name = 'validation'

    def __init__(self, iterator, model, comm, device=None, converter=None):
        kwargs = {'device': device}
        if converter is not None:
            kwargs['converter'] = converter
        super().__init__(iterator, model, **kwargs)
        self.comm = comm

    def evaluate(self):
        iterator = self._iterators['main']
        model = self._targets['main']
        if hasattr(iterator, 'reset'):
            iterator.reset()
        sums = numpy.zeros(4, dtype=numpy.float64)  # loss, top1, top5, count
        failed = None
        with chainer.using_config('train', False), \
                chainer.using_config('enable_backprop', False):
            try:
                for batch in iterator:
                    x, t = convert._call_converter(self.converter, batch, self.device)
                    y = model.predictor(x) if hasattr(model, 'predictor') else model(x)
                    sums += _batch_sums(chainer.as_variable(y).array, t)
            except DatasetError as error:      # this rank's images: the others are fine
                failed = error
        communication.agree(self.comm.mpi_comm, failed)
        total = numpy.empty_like(sums)
        self.comm.mpi_comm.Allreduce(sums, total)
        count = max(total[3], 1.0)
        prefix = (self.name or self.default_name) + '/main/'
        result = {prefix + 'loss': total[0] / count,
                  prefix + 'accuracy': total[1] / count,
                  prefix + 'top5': total[2] / count,
                  prefix + 'images': total[3]}
        return result


def _batch_sums(logits, labels):
    """(summed loss, top-1 correct, top-5 correct, count) of one batch.

    The true class is in the top k when fewer than k *other* classes score at
    least as high: a tie counts against it, and a row with any NaN or
    infinite logit counts as wrong (comparisons with NaN are false, so a
    "strictly higher" count would call every NaN row correct).
    """
    xp = chainer.backend.get_array_module(logits)
    loss = F.softmax_cross_entropy(logits, labels, reduce='no').array.sum()
    k = min(5, logits.shape[1])
    true_scores = logits[xp.arange(len(labels)), labels][:, None]
    rank = (logits >= true_scores).sum(axis=1) - 1
    finite = xp.isfinite(logits).all(axis=1)
    return numpy.array([float(loss), float((finite & (rank < 1)).sum()),
                        float((finite & (rank < k)).sum()), float(len(labels))])
