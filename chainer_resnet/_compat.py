"""Make chainer 7.8.1 import and run on today's Python stacks.

Chainer 7.8.1 (2020) is unmaintained. Five lines of it break on current
stacks; this module rewrites exactly those lines, in memory, while the
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
5      ``chainermn/communicators/_memory_utility.py`` ``xp.array(v, copy=False, dtype=d)``:
                                                   NumPy 2 / CuPy 14 raise when a copy
                                                   is needed (packing grads in fp16)
=====  ==========================================  ==============================

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
        # Point 5: astype(copy=False) copies only when the dtype differs, on
        # NumPy 1 and 2 and on CuPy 13 and 14.
        ('v = xp.array(v, copy=False, dtype=transfer_dtype)',
         'v = v.astype(transfer_dtype, copy=False)'),
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
