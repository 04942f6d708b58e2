"""train_imagenet.py with the virtual workers' negative control switched on.

The updater runs each rank's k micro-batches as one batch through the
model (``TimedUpdater(joint_bn=True)``): one BN statistic over all of them,
the gradient accumulation a user might try instead of virtual workers.
Same arguments as train_imagenet.py.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import train_imagenet  # noqa: E402
from chainer_resnet import updater  # noqa: E402

real_init = updater.TimedUpdater.__init__


def joint_init(self, *args, **kwargs):
    kwargs['joint_bn'] = True
    real_init(self, *args, **kwargs)


updater.TimedUpdater.__init__ = joint_init
sys.exit(train_imagenet.main(sys.argv[1:]))
