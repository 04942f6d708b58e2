"""chainer_resnet: ResNet-50 on ImageNet the way Akiba et al. (2017) trained it.

Importing the package installs the compatibility hook for chainer 7.8.1
(:mod:`chainer_resnet._compat`); it does not import Chainer, CuPy or MPI.
"""

from chainer_resnet import _compat

_compat.install()

__version__ = '0.1.0'
