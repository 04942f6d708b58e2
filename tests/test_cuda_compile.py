"""The CUDA compile stage's own pieces (tests/cuda_compile): meta-CuPy's recording and
type rules, and the compile script's model of CuPy's launch against CuPy itself.

The stage as a whole runs in ``make test-cuda``; these tests pin the parts whose
mistakes would make it compile something other than what CuPy would.
"""

import os
import sys

import numpy
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cuda_compile'))

import compile_kernels  # noqa: E402
import meta_cupy  # noqa: E402


@pytest.fixture
def records(monkeypatch):
    monkeypatch.setattr(meta_cupy, 'RECORDS', [])
    monkeypatch.setattr(meta_cupy, '_SEEN', set())
    return meta_cupy.RECORDS


def test_elementwise_outputs_take_the_bound_type_and_broadcast_shape(records):
    # The output placeholder is bound by an input (CuPy: outputs first, then inputs).
    k = meta_cupy.ElementwiseKernel('S t, raw T log_y, int32 n', 'T out', 'out = 0', 'k')
    t = meta_cupy.ndarray((8,), numpy.int32)
    log_y = meta_cupy.ndarray((8, 10), numpy.float32)
    out = k(t, log_y, 10)
    assert out.shape == (8,) and out.dtype == numpy.float32
    [record] = records
    assert not record['outputs_given']
    assert [a['kind'] for a in record['args']] == ['ndarray', 'ndarray', 'scalar', 'ndarray']
    assert record['args'][1]['shape'] == [8, 10] and record['args'][2]['dtype'] == 'int'
    # Broadcast of the non-raw inputs; an explicit output dtype wins.
    k2 = meta_cupy.ElementwiseKernel('T x, T y', 'float64 z', 'z = x + y', 'k2')
    z = k2(meta_cupy.ndarray((4, 1), numpy.float16), meta_cupy.ndarray((1, 3), numpy.float16))
    assert z.shape == (4, 3) and z.dtype == numpy.float64


def test_a_launch_is_recorded_once(records):
    k = meta_cupy.ElementwiseKernel('T x', 'T y', 'y = x', 'copy')
    x = meta_cupy.ndarray((3,), numpy.float32)
    k(x), k(x)
    k(meta_cupy.ndarray((3,), numpy.float64))
    assert len(records) == 2 and records[0]['caller'].endswith(
        'test_a_launch_is_recorded_once')


def test_zero_dim_arrays_promote_as_cupy_does():
    # NumPy 1 would give float64 (value-based casting of 0-dim arrays); CuPy float32.
    count = meta_cupy.asarray(numpy.float32(8)).reshape(())
    coeff = 1.0 / numpy.maximum(1, count)
    assert coeff.dtype == numpy.float32 and coeff.shape == ()


def test_arrays_are_not_numpy_arrays_and_refuse_silent_transfers():
    x = meta_cupy.asarray(numpy.arange(4, dtype=numpy.float32))
    assert not isinstance(x, numpy.ndarray)
    with pytest.raises(TypeError, match='Implicit conversion'):
        numpy.asarray(x)
    assert (x.get() == numpy.arange(4)).all()
    x += 1
    assert float(x.sum()) == 10.0


def test_device_memory_and_nccl_copy_as_on_a_gpu():
    nccl = meta_cupy._nccl_module()
    a, b = meta_cupy.alloc(16), meta_cupy.alloc(16)
    view = meta_cupy.ndarray((4,), numpy.float32, memptr=a)
    view[...] = meta_cupy.asarray(numpy.array([1, 2, 3, 4], numpy.float32))
    comm = nccl.NcclCommunicator(1, nccl.get_unique_id(), 0)
    comm.allReduce(a.ptr, b.ptr, 4, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, 0)
    assert meta_cupy.ndarray((4,), numpy.float32, memptr=b).get().tolist() == [1, 2, 3, 4]
    # Pointer arithmetic and .data of a view, as ChainerMN's buffers use them.
    assert (a + 8).ptr == a.ptr + 8 and view[2:].data.ptr == a.ptr + 8
    with pytest.raises(nccl.NcclError):
        nccl.NcclCommunicator(2, None, 0)


def test_unknown_cupy_api_fails_loudly():
    with pytest.raises(NotImplementedError, match='cupy.RawModule'):
        meta_cupy._unsupported('cupy.RawModule')()


# ---- the compile script's model of CuPy's launch, against CuPy (make test-cuda) ----

def _layouts():
    """Arrays as a ResNet step passes them: contiguous, transposed (im2col's NHWC
    output rolled to NCHW), sliced, broadcast (BN's per-channel statistics)."""
    base = numpy.zeros((8, 64, 12, 12), numpy.float32)
    yield base
    yield base.transpose(0, 2, 3, 1)
    yield numpy.rollaxis(numpy.zeros((8, 12, 12, 64), numpy.float32), 3, 1)
    yield base[:, :, ::2]
    yield base[:, 3:5]
    yield numpy.broadcast_to(numpy.zeros((1, 64, 1, 1), numpy.float32), base.shape)
    yield numpy.zeros((2, 3, 4, 5, 6), numpy.float16).transpose(4, 0, 2, 1, 3)
    yield numpy.zeros((5, 1, 7), numpy.float64)


@pytest.mark.cupy_wheel
@pytest.mark.parametrize('layout', list(range(len(list(_layouts())))))
def test_reduce_dims_of_one_array_is_cupys_reduced_view(layout):
    # CuPy merges the dimensions of a lone array with ndarray.reduced_view(), which
    # needs no device: the compile script's reduce_dims must give the same view.
    import cupy
    from cupy.cuda import memory
    keep = []

    def host_memory(size):
        buffer = numpy.empty(max(size, 1), numpy.uint8)
        keep.append(buffer)
        return memory.MemoryPointer(memory.UnownedMemory(buffer.ctypes.data, size, buffer,
                                                         0), 0)
    a = list(_layouts())[layout]
    buffer = host_memory(a.nbytes + a.itemsize * a.size)
    x = cupy.ndarray(a.shape, a.dtype, memptr=buffer, strides=a.strides)
    expected = x.reduced_view()
    arrays = [compile_kernels.Array({'dtype': a.dtype.name, 'shape': list(a.shape),
                                     'strides': list(a.strides)})]
    shape = compile_kernels.reduce_dims(arrays, [False], list(a.shape))
    assert (tuple(shape), tuple(arrays[0].strides)) == (expected.shape, expected.strides)
    assert arrays[0].c_contiguous == expected.flags.c_contiguous
