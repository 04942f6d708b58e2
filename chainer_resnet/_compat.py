"""Make chainer 7.8.1 import and run on today's Python stacks.

Chainer 7.8.1 (2020) is unmaintained. Five places in it break on current
stacks; this module rewrites exactly those places, in memory, while the
affected modules are imported. Nothing on disk is changed, nothing else in
Chainer is touched, and NumPy itself is not monkey-patched.

=====  ==========================================  ==============================
point  where                                       what breaks
=====  ==========================================  ==============================
1      ``chainer/_environment_check.py``           ``import numpy.distutils``: absent on
                                                   Python 3.12, fails with setuptools>=74
2      ``chainer/_environment_check.py``           ``import pkg_resources``: gone in
                                                   setuptools>=82
3      ``chainer/functions/array/as_strided.py``   ``np.sctypes``: removed in NumPy 2
4      ``chainer/functions/array/resize_images.py`` ``numpy.float``: removed in NumPy 1.24
5      ``chainermn/communicators/_memory_utility.py`` the batched pack/unpack kernels use
                                                   ``half`` and include only
                                                   ``<cupy/carray.cuh>``, which no longer
                                                   brings in ``<cuda_fp16.h>`` in CuPy 14:
                                                   every pure_nccl update fails to compile
=====  ==========================================  ==============================

Point 5 is the kernel source that ``pure_nccl`` always runs for gradients
(``batched_copy`` cannot be turned off: ``PureNcclCommunicator.set_config``
drops the value). It is compiled for sm_60 and sm_90 on CuPy 13 and 14 by
``make test-cuda`` (``tests/cuda_compile``), whose negative control is the
unpatched source.

:func:`install` must run before the first ``import chainer``;
``import chainer_resnet`` does it. Each rewrite checks that the original text
is present, so a different Chainer version fails loudly instead of silently
running unpatched code.
"""

import importlib.abc
import importlib.machinery
import sys
import warnings

CHAINER_VERSION = '7.8.1'

# The opening of ChainerMN's batched pack ('pack') or unpack ('unpack') kernel source.
_KERNEL = ("def _cupy_batched_{0}_params():\n"
           "    return chainer.cuda.raw(r'''\n"
           "#include <cupy/carray.cuh>\n")

# module name -> list of (original text, replacement text)
PATCHES = {
    'chainer._environment_check': [
        # Points 1 and 2. numpy.distutils is only used on macOS to detect
        # Accelerate; pkg_resources only to warn about optional-dependency
        # versions. Both checks become no-ops where the module is missing.
        ('import numpy.distutils.system_info\nimport pkg_resources\n',
         'try:\n'
         '    import numpy.distutils.system_info\n'
         'except Exception:  # chainer_resnet._compat point 1\n'
         '    pass\n'
         'try:\n'
         '    import warnings as _w\n'
         '    with _w.catch_warnings():\n'
         '        _w.simplefilter("ignore")\n'
         '        import pkg_resources\n'
         'except Exception:  # chainer_resnet._compat point 2\n'
         '    pkg_resources = None\n'),
        ('    if sys.platform != \'darwin\':\n        return\n',
         '    if sys.platform != \'darwin\' or \'numpy.distutils\' not in sys.modules:\n'
         '        return\n'),
        ('def _check_optional_dependencies():\n',
         'def _check_optional_dependencies():\n'
         '    if pkg_resources is None:\n'
         '        return\n'),
    ],
    'chainer.functions.array.as_strided': [
        # Point 3: the two lists np.sctypes gave on every platform we support.
        ("{t().itemsize: t for t in np.sctypes['int']}",
         "{t().itemsize: t for t in (np.int8, np.int16, np.int32, np.int64)}"),
        ("gy.dtype not in np.sctypes['float']",
         "gy.dtype not in (np.float16, np.float32, np.float64, np.longdouble)"),
    ],
    'chainer.functions.array.resize_images': [
        # Point 4: numpy.float was an alias of the builtin float (float64).
        ('dtype=numpy.float)', 'dtype=numpy.float64)'),
    ],
    'chainermn.communicators._memory_utility': [
        # Point 5: cuda_fp16.h defines `half`; CuPy 13's carray.cuh included it,
        # CuPy 14's does not (its include guard makes the line harmless on 13).
        (_KERNEL.format('pack'), _KERNEL.format('pack') + '#include <cuda_fp16.h>\n'),
        (_KERNEL.format('unpack'), _KERNEL.format('unpack') + '#include <cuda_fp16.h>\n'),
    ],
}


class IncompatibleChainerError(ImportError):
    """Raised when a module to patch does not contain the expected text."""


class _PatchingLoader(importlib.machinery.SourceFileLoader):
    def __init__(self, fullname, path, patches):
        super().__init__(fullname, path)
        self._patches = patches

    def get_code(self, fullname):
        source = self.get_data(self.path).decode('utf-8')
        for old, new in self._patches:
            if old not in source:
                raise IncompatibleChainerError(
                    'chainer_resnet cannot patch {} ({}): the text {!r} is '
                    'missing. chainer_resnet supports chainer=={} only; '
                    'install it with `pip install chainer=={}`.'.format(
                        fullname, self.path, old.splitlines()[0],
                        CHAINER_VERSION, CHAINER_VERSION))
            source = source.replace(old, new)
        # No bytecode cache: the cached .pyc would hold unpatched code for
        # the next interpreter that imports chainer without this hook.
        return compile(source, self.path, 'exec', dont_inherit=True)


class _PatchingFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        patches = PATCHES.get(fullname)
        if patches is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(
                spec.loader, importlib.machinery.SourceFileLoader):
            return spec
        spec.loader = _PatchingLoader(fullname, spec.origin, patches)
        return spec


_FINDER = _PatchingFinder()


def install():
    """Install the import hook. Idempotent.

    Warns when one of the patched modules was already imported without it:
    that code is live and cannot be fixed in place.
    """
    if _FINDER in sys.meta_path:
        return
    already = [name for name in PATCHES if name in sys.modules]
    if already:
        warnings.warn(
            'chainer was imported before chainer_resnet, so the compatibility '
            'patches for {} could not be applied. Import chainer_resnet '
            '(or call chainer_resnet._compat.install()) before chainer.'
            .format(', '.join(already)), RuntimeWarning, stacklevel=2)
    sys.meta_path.insert(0, _FINDER)


def patched_modules():
    """Names of the patched modules that are imported and carry the patch."""
    return sorted(name for name, mod in sys.modules.items()
                  if name in PATCHES and isinstance(
                      getattr(getattr(mod, '__spec__', None), 'loader', None),
                      _PatchingLoader))
