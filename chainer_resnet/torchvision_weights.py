"""Our ResNet-50 arrays in torchvision's layout, and back.

torchvision's ``resnet50`` is our v1.5 model under other names, with one numerical
difference: its BN adds eps = 1e-5 to the variance, Chainer's 2e-5. Names::

    conv1/W                       conv1.weight
    bn1/{gamma,beta,mean,var}     bn1.{weight,bias,running_mean,running_var}
                                  (+ bn1.num_batches_tracked, written as 0)
    res{s}/{i}/conv{j}/W          layer{s-1}.{i}.conv{j}.weight
    res{s}/{i}/bn{j}/...          layer{s-1}.{i}.bn{j}....
    res{s}/{i}/shortcut_conv/W    layer{s-1}.{i}.downsample.0.weight
    res{s}/{i}/shortcut_bn/...    layer{s-1}.{i}.downsample.1....
    fc/W, fc/b                    fc.weight, fc.bias

(Chainer's moving-average BN keeps ``avg_mean``/``avg_var`` where ours keeps
``mean``/``var``; both map to the running statistics.) Shapes are the same
on both sides: convs (out, in, kh, kw), the classifier (out, in).

The eps, both ways: :func:`to_torchvision` adds ``eps - 1e-5`` to every
variance, so that ``var + 1e-5`` in torchvision equals ``var + eps`` here.
:func:`read` keeps torchvision's variances and describes the model with BN
eps 1e-5 (exact; :mod:`chainer_resnet.model_file` builds BN links with the
described eps); :func:`shift_variances` converts to another eps where a
model must have one (e.g. ``--init-model`` into a recipe's 2e-5 model).

File formats: ``.pth``/``.pt`` through ``torch.save``/``torch.load``
(``weights_only``; torch is imported only here, only then), and
``.safetensors`` written and read with NumPy alone (the format is an 8-byte
header length, a JSON header, then the raw little-endian arrays).
"""

import collections
import dataclasses
import json
import re
import struct

import numpy

TORCHVISION_BN_EPS = 1e-5
_BN = {'gamma': 'weight', 'beta': 'bias', 'mean': 'running_mean', 'var': 'running_var',
       'avg_mean': 'running_mean', 'avg_var': 'running_var'}
_CONV = {'conv1': 'conv1', 'conv2': 'conv2', 'conv3': 'conv3', 'shortcut_conv': 'downsample.0'}
_BNS = {'bn1': 'bn1', 'bn2': 'bn2', 'bn3': 'bn3', 'shortcut_bn': 'downsample.1'}
_BLOCK = re.compile(r'^res([2-5])/(\d+)/(\w+)/(\w+)$')
_SAFETENSORS_DTYPES = {'F64': numpy.float64, 'F32': numpy.float32, 'F16': numpy.float16,
                       'I64': numpy.int64, 'I32': numpy.int32, 'U8': numpy.uint8}


def torchvision_name(name):
    """torchvision's name of our array ``name``; None for arrays it has no place for."""
    if name == 'conv1/W':
        return 'conv1.weight'
    if name in ('fc/W', 'fc/b'):
        return 'fc.weight' if name == 'fc/W' else 'fc.bias'
    if name.startswith('bn1/'):
        field = name.split('/')[1]
        return 'bn1.' + _BN[field] if field in _BN else None
    match = _BLOCK.match(name)
    if not match:
        return None
    stage, block, link, field = match.groups()
    prefix = 'layer{}.{}.'.format(int(stage) - 1, block)
    if link in _CONV and field == 'W':
        return prefix + _CONV[link] + '.weight'
    if link in _BNS and field in _BN:
        return prefix + _BNS[link] + '.' + _BN[field]
    return None


def _is_variance(name):
    return name.endswith(('/var', '/avg_var'))


def to_torchvision(arrays, architecture):
    """torchvision's ``resnet50`` state dict (NumPy arrays) of our model's ``arrays``.

    Variances are shifted by ``bn_eps - 1e-5`` (see the module docstring).
    Raises ValueError for a v1 model: torchvision's resnet50 puts the stride
    on the 3x3 conv, so v1 weights would load and compute something else.
    """
    if architecture['variant'] != 'v1.5':
        raise ValueError(
            'torchvision\'s resnet50 is ResNet-50 v1.5 (stride 2 on the 3x3 conv); this model '
            'is {}: its weights would load into torchvision and compute something else. '
            'Export it to ONNX instead (the graph keeps its strides).'.format(
                architecture['variant']))
    shift = float(architecture.get('bn_eps', 2e-5)) - TORCHVISION_BN_EPS
    state = collections.OrderedDict()
    for name in sorted(arrays):
        target = torchvision_name(name)
        if target is None:
            continue
        value = numpy.asarray(arrays[name])
        if _is_variance(name):
            value = (value.astype(numpy.float64) + shift).astype(value.dtype)
        state[target] = value
        if target.endswith('.running_var'):
            state[target[:-len('running_var')] + 'num_batches_tracked'] = numpy.array(
                0, dtype=numpy.int64)
    return state


def from_torchvision(state, architecture):
    """Our arrays (``mean``/``var`` or ``avg_mean``/``avg_var`` per ``architecture``)
    from a torchvision ResNet-50 state dict, variances as they are (eps 1e-5)."""
    from chainer_resnet import model_file
    predictor = model_file.build(architecture)
    from chainer.serializers import npz
    arrays, missing = {}, []
    for name, ours in npz.serialize(predictor).items():
        target = torchvision_name(name)
        if target is None:          # e.g. the moving-average BN's sample count N
            arrays[name] = ours
            continue
        if target not in state:
            missing.append(target)
            continue
        value = numpy.asarray(state[target])
        if value.shape != ours.shape:
            raise ValueError('{} has shape {}, a ResNet-50 with {} classes needs {}'.format(
                target, value.shape, architecture['num_classes'], ours.shape))
        arrays[name] = value.astype(ours.dtype)
    if missing:
        raise ValueError('the state dict is not a torchvision resnet50: {} entries missing '
                         '(first: {})'.format(len(missing), missing[0]))
    return arrays


def shift_variances(arrays, from_eps, to_eps):
    """``arrays`` with BN variances moved from eps ``from_eps`` to ``to_eps``.

    Returns ``(arrays, clipped)``: a variance that would go below 0 is set to
    0 and counted in ``clipped`` (those channels then differ slightly).
    """
    shifted, clipped = dict(arrays), 0
    for name, value in arrays.items():
        if _is_variance(name):
            moved = numpy.asarray(value, dtype=numpy.float64) + (from_eps - to_eps)
            clipped += int((moved < 0).sum())
            shifted[name] = numpy.maximum(moved, 0).astype(numpy.asarray(value).dtype)
    return shifted, clipped


def write(path, state):
    """Write a state dict of NumPy arrays as ``.safetensors`` (NumPy) or ``.pth`` (torch)."""
    if path.endswith('.safetensors'):
        return _write_safetensors(path, state)
    torch = _torch('write ' + path)
    torch.save(collections.OrderedDict(
        (name, torch.from_numpy(numpy.ascontiguousarray(value)))
        for name, value in state.items()), path)


def read_state(path):
    """A torchvision state dict (NumPy arrays) from ``.safetensors``, ``.pth`` or ``.pt``.

    A checkpoint that wraps the state dict as ``{'state_dict': ...}`` or
    ``{'model': ...}`` is unwrapped; a ``module.`` prefix (DataParallel) dropped.
    """
    if path.endswith('.safetensors'):
        state = _read_safetensors(path)
    else:
        torch = _torch('read ' + path)
        loaded = torch.load(path, map_location='cpu', weights_only=True)
        for key in ('state_dict', 'model'):
            if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
                loaded = loaded[key]
        state = {name: value.numpy() for name, value in loaded.items()
                 if hasattr(value, 'numpy')}
    return {name[len('module.'):] if name.startswith('module.') else name: value
            for name, value in state.items()}


def read(path, variant='v1.5', classes=None, base=None):
    """``(arrays, description)`` of a torchvision ResNet-50 state dict file.

    The description: BN eps 1e-5, ImageNet preprocessing (shorter side 256,
    centre 224, ImageNet mean/std: torchvision's), the classes as given; or,
    with ``base`` (the description our export wrote beside the file), that
    one with BN eps 1e-5: an exported model comes back as it was.
    """
    from chainer_resnet import model_file, recipes
    try:
        state = read_state(path)
    except (OSError, ValueError, RuntimeError) as e:
        raise model_file.ModelFileError('cannot read {} as a torchvision state dict ({}: {})'
                                        .format(path, type(e).__name__, e)) from None
    if 'fc.weight' not in state:
        raise model_file.ModelFileError('{} is not a torchvision resnet50 state dict (no '
                                        'fc.weight)'.format(path))
    statistics = 'torchvision running statistics (imported from {})'.format(path)
    if base is not None:
        description = dict(base, bn_statistics=statistics, architecture=dict(
            base['architecture'], bn_eps=TORCHVISION_BN_EPS))
        if classes is not None:
            description['classes'] = classes
    else:
        recipe = dataclasses.replace(recipes.AKIBA2017, name='torchvision',
                                     num_classes=int(state['fc.weight'].shape[0]),
                                     resnet_variant=variant, expected_workers=None,
                                     val_resize_rounding='torchvision')
        description = model_file.describe(recipe, classes=classes,
                                          bn_eps=TORCHVISION_BN_EPS, bn_statistics=statistics)
    try:
        arrays = from_torchvision(state, description['architecture'])
    except ValueError as e:
        raise model_file.ModelFileError('{}: {}'.format(path, e)) from None
    return arrays, description


def _torch(what):
    try:
        import torch
    except ImportError:
        from chainer_resnet.model_file import ModelFileError
        raise ModelFileError('to {} PyTorch is needed (pip install torch); .safetensors '
                             'files need nothing more than NumPy.'.format(what)) from None
    return torch


def _write_safetensors(path, state):
    codes = {numpy.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}
    header, offset, blobs = {}, 0, []
    for name, value in state.items():
        value = numpy.ascontiguousarray(value)
        data = value.astype(value.dtype.newbyteorder('<'), copy=False).tobytes()
        header[name] = {'dtype': codes[value.dtype], 'shape': list(value.shape),
                        'data_offsets': [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(',', ':')).encode('utf-8')
    text += b' ' * (-len(text) % 8)       # the arrays start 8-byte aligned
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(text)))
        f.write(text)
        for data in blobs:
            f.write(data)


def _read_safetensors(path):
    with open(path, 'rb') as f:
        (size,) = struct.unpack('<Q', f.read(8))
        header = json.loads(f.read(size).decode('utf-8'))
        body = f.read()
    state = {}
    for name, entry in header.items():
        if name == '__metadata__':
            continue
        begin, end = entry['data_offsets']
        dtype = numpy.dtype(_SAFETENSORS_DTYPES[entry['dtype']]).newbyteorder('<')
        state[name] = numpy.frombuffer(body[begin:end], dtype=dtype).reshape(
            entry['shape']).astype(dtype.newbyteorder('='))
    return state
