"""chainer_resnet: ResNet-50 on ImageNet the way Akiba et al. (2017) trained it.

Importing the package installs the compatibility hook for chainer 7.8.1
(:mod:`chainer_resnet._compat`) and makes pip's cuDNN 8 visible to CuPy 13
(:func:`chainer_resnet.gpu.expose_pip_cudnn`); it does not import Chainer, CuPy
or MPI.
"""

from chainer_resnet import _compat, gpu

_compat.install()
# Before Chainer imports CuPy, which decides at import whether it has cuDNN.
gpu.expose_pip_cudnn()

__version__ = '0.1.0'
