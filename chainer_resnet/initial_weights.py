"""Start a run from trained weights (the trainer's ``--init-model``): fine-tuning.

:func:`load_into` copies the arrays of a model file (anything
:mod:`chainer_resnet.model_file` opens: a ``model.npz``, a snapshot, a
torchvision state dict) into the freshly initialised model of the recipe:

- rank 0 alone reads the file and broadcasts its arrays in one collective (a
  read error ends every rank with one message), so every rank starts from the
  same weights and BN statistics, and the file is read once per job;
- the architecture must be the recipe's (ResNet-50, the same variant);
- the classifier (``fc``) keeps its initialisation when the number of classes
  differs: fine-tuning to another label set;
- BN statistics move between the two BN kinds (``mean``/``var`` of the
  paper's BN, ``avg_mean``/``avg_var`` of Chainer's moving averages) and
  between BN eps (torchvision's 1e-5 to the recipe model's 2e-5: variance
  minus 1e-5, clipped at 0 and counted).

Resuming a fine-tuning run loads the snapshot over these weights, so a
resumed run equals an uninterrupted one as before (tests/test_initial_weights.py).
"""

import chainer
from chainer.serializers import npz

from chainer_resnet import batch_normalization, communication, model_file, torchvision_weights

# The other BN kind's name of a statistic.
_ALIASES = {'mean': 'avg_mean', 'var': 'avg_var', 'avg_mean': 'mean', 'avg_var': 'var'}


def _bn_eps(predictor):
    for _, link in predictor.namedlinks():
        if isinstance(link, (batch_normalization.LastBatchNormalization,
                             chainer.links.BatchNormalization)):
            return float(link.eps)
    return model_file.CHAINER_BN_EPS


def load_into(predictor, path, recipe, comm):
    """Copy the weights in ``path`` into ``predictor`` on every rank; return what was done."""
    arrays, description = communication.from_rank0(
        comm, model_file.read, path, errors=(model_file.ModelFileError,))
    arch = description['architecture']
    if arch['variant'] != recipe.resnet_variant:
        error = model_file.ModelFileError(
            '--init-model {} is ResNet-50 {}, the recipe builds {}: its weights would compute '
            'something else. Pass --set resnet_variant={}.'.format(
                path, arch['variant'], recipe.resnet_variant, arch['variant']))
        error.collective_rank = comm.rank     # every rank has the same description
        raise error
    eps = _bn_eps(predictor)
    arrays, clipped = torchvision_weights.shift_variances(arrays, float(arch['bn_eps']), eps)
    merged, replaced = {}, []
    for name, value in npz.serialize(predictor).items():
        head, _, field = name.rpartition('/')
        source = arrays.get(name, arrays.get(head + '/' + _ALIASES.get(field, field)))
        if source is None or source.shape != value.shape:
            if not name.startswith('fc/') and field != 'N':
                error = model_file.ModelFileError(
                    '--init-model {}: {} {} (the recipe\'s model needs {})'.format(
                        path, name, 'is missing' if source is None else
                        'has shape {}'.format(source.shape), value.shape))
                error.collective_rank = comm.rank
                raise error
            source = value                       # the classifier keeps its initialisation
            if field != 'N':
                replaced.append(name)
        merged[name] = source.astype(value.dtype, copy=False)
    npz.NpzDeserializer(merged).load(predictor)
    line = 'init-model: {} ({} classes, iteration {}): {} arrays copied'.format(
        path, arch['num_classes'], description.get('iteration'), len(merged) - len(replaced))
    if replaced:
        line += '; classifier replaced ({} -> {} classes, initialised)'.format(
            arch['num_classes'], recipe.num_classes)
    if float(arch['bn_eps']) != eps:
        line += '; BN variances moved from eps {:g} to {:g} ({} clipped at 0)'.format(
            float(arch['bn_eps']), eps, clipped)
    return line
