"""Our ResNet-50 as an ONNX graph, written node by node with ``onnx.helper``.

The graph follows the links, not a trace: Conv (no bias), BatchNormalization
(inference form, with the model's own eps: no variance shift is needed),
Relu, MaxPool 3x3/2 pad 1 (Chainer's ``cover_all=False`` is ONNX's
``ceil_mode=0``), Add, GlobalAveragePool, Flatten, Gemm. The input is
``input`` (N, 3, H, W) float32, normalised as the model file's
``preprocessing`` says; the output ``logits`` (N, classes). Batch, height and
width are symbolic. The model file's description travels in the ONNX
model's ``metadata_props`` (key ``chainer_resnet``), so the class names and
the preprocessing stay with the graph.

Why not onnx-chainer: its last release (1.6.0, 2020) needs ``onnx.mapping``,
which current onnx no longer has; it exports with onnx 1.14 (Python <= 3.11,
NumPy 1), not on the NumPy-2 stack (benchmarks/README.md, "ONNX export").
Why not through torch: it would make a 3 GB install the price of an export.
``onnx`` is imported only here, only when a graph is written.
"""

import json

import numpy

OPSET = 17
INPUT, OUTPUT = 'input', 'logits'


class _Graph(object):
    def __init__(self, helper, numpy_helper):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers = [], []

    def constant(self, name, value):
        self.initializers.append(self.numpy_helper.from_array(
            numpy.ascontiguousarray(numpy.asarray(value, dtype=numpy.float32)), name))
        return name

    def node(self, op, inputs, output, **attributes):
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=output,
                                                **attributes))
        return output

    def conv(self, link, x, name):
        kh, kw = link.W.shape[2:]
        sy, sx = _pair(link.stride)
        ph, pw = _pair(link.pad)
        w = self.constant(name + '.weight', link.W.array)
        return self.node('Conv', [x, w], name, kernel_shape=[kh, kw], strides=[sy, sx],
                         pads=[ph, pw, ph, pw])

    def bn(self, link, x, name):
        mean, var = ((link.mean, link.var) if hasattr(link, 'var')
                     else (link.avg_mean, link.avg_var))
        inputs = [x] + [self.constant(name + suffix, value) for suffix, value in (
            ('.scale', link.gamma.array), ('.bias', link.beta.array),
            ('.mean', mean), ('.var', var))]
        return self.node('BatchNormalization', inputs, name, epsilon=float(link.eps))

    def relu(self, x, name):
        return self.node('Relu', [x], name)


def _pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _host(predictor):
    import chainer
    predictor = predictor.copy(mode='copy')
    predictor.to_device(chainer.get_device('@numpy'))
    return predictor


def graph(predictor, description=None):
    """The ONNX ModelProto of ``predictor`` (a :class:`~chainer_resnet.resnet.ResNet`)."""
    import onnx
    from onnx import helper, numpy_helper
    predictor = _host(predictor)
    g = _Graph(helper, numpy_helper)
    h = g.relu(g.bn(predictor.bn1, g.conv(predictor.conv1, INPUT, 'conv1'), 'bn1'), 'relu1')
    h = g.node('MaxPool', [h], 'pool1', kernel_shape=[3, 3], strides=[2, 2],
               pads=[1, 1, 1, 1])
    for stage in ('res2', 'res3', 'res4', 'res5'):
        for i, block in enumerate(getattr(predictor, stage)):
            p = '{}.{}.'.format(stage, i)
            x = h
            h = g.relu(g.bn(block.bn1, g.conv(block.conv1, x, p + 'conv1'), p + 'bn1'),
                       p + 'relu1')
            h = g.relu(g.bn(block.bn2, g.conv(block.conv2, h, p + 'conv2'), p + 'bn2'),
                       p + 'relu2')
            h = g.bn(block.bn3, g.conv(block.conv3, h, p + 'conv3'), p + 'bn3')
            if block.projection:
                x = g.bn(block.shortcut_bn, g.conv(block.shortcut_conv, x, p + 'shortcut_conv'),
                         p + 'shortcut_bn')
            h = g.relu(g.node('Add', [h, x], p + 'add'), p + 'out')
    h = g.node('Flatten', [g.node('GlobalAveragePool', [h], 'pool5')], 'flatten', axis=1)
    fc = predictor.fc
    g.node('Gemm', [h, g.constant('fc.weight', fc.W.array), g.constant('fc.bias', fc.b.array)],
           OUTPUT, transB=1)
    n_class = fc.W.shape[0]
    model = helper.make_model(
        helper.make_graph(
            g.nodes, 'resnet50', [helper.make_tensor_value_info(
                INPUT, onnx.TensorProto.FLOAT, ['N', 3, 'H', 'W'])],
            [helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, ['N', n_class])],
            initializer=g.initializers),
        opset_imports=[helper.make_opsetid('', OPSET)], producer_name='chainer_resnet',
        doc_string='ResNet-50 {} from chainer_resnet; input: see metadata "chainer_resnet" '
                   'preprocessing'.format(getattr(predictor, 'variant', '')))
    if description is not None:
        helper.set_model_props(model, {'chainer_resnet': json.dumps(description,
                                                                    sort_keys=True)})
    onnx.checker.check_model(model)
    return model


def write(path, predictor, description=None):
    """Write the ONNX graph of ``predictor`` to ``path``."""
    try:
        import onnx
    except ImportError:
        from chainer_resnet.model_file import ModelFileError
        raise ModelFileError('ONNX export needs the onnx package: pip install onnx (or '
                             'pip install chainer_resnet[export])') from None
    onnx.save(graph(predictor, description), path)
