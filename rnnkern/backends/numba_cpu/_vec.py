"""``Vec``: explicit SIMD vectors for Numba code, and the few operations on them.

Numba has no SIMD types of its own. LLVM vectorises plain loops, but at the sizes these
kernels run it often does badly: it keeps a tile of a product in registers only when the
accumulators are values, not array elements it cannot prove unaliased, and a loop of 48
elements runs a vector body of 32 and a scalar remainder of 16 (the pointwise pass of the
batch-inner LSTM spent half its time there). So ``Vec`` is an LLVM vector of ``VECTOR_BYTES``
(32: 8 float32 or 4 float64; 64 where the CPU has AVX-512) that Numba code holds in
local variables:

- ``vload``/``vstore``: lanes at a flat index into a C-contiguous float array (no
  wraparound check on the index, unlike ``a[i]``, which cost a third of a product's speed),
  ``vload_first``/``vstore_first``, the first n lanes only, and ``vload_upto``/``vstore_upto``,
  whichever of the two n asks for (a row's last vector);
- ``vbcast`` (an element in every lane), ``vsplat`` (a scalar in every lane), ``vzero``;
- ``vfma`` (a * b + c), ``+ - * /`` between vectors or a vector and a scalar, and
  ``minimum``/``maximum`` (which also take two scalars, so that one source serves both:
  the activations of ``_activations`` run on scalars and on vectors);
- ``vtanh_libm``/``vexp_libm``: ``math.tanh``/``math.exp`` on each lane, for the float64
  activations, which stay on libm for parity with the oracle;
- ``vsum`` (the lanes added in order) and ``where_positive`` (a ReLU's gradient).
"""

from __future__ import annotations

import math
import operator

from llvmlite import ir
from llvmlite.binding import llvm_version_info
from numba import config, njit, types
from numba.core import cgutils
from numba.core.codegen import get_host_cpu_features
from numba.core.typing import signature
from numba.extending import intrinsic, models, overload, register_model

#: whether the LLVM under llvmlite has opaque pointers by default (intrinsics name them p0)
_OPAQUE_POINTERS = llvm_version_info >= (15,)


def _vector_bytes() -> int:
    """64 where the CPU Numba compiles for has AVX-512 (zmm registers), else 32 (AVX2's ymm).

    Measured on a 2-core Zen 4 (which runs a 512-bit instruction as two 256-bit halves, at
    the same peak): the packed product at 32x1024 @ 1024x4096 reached 103 GFLOP/s on one
    core with 64-byte vectors against 83 with 32 (half the loads and instructions per
    multiply-add).
    """
    # NUMBA_CPU_FEATURES when set (caches portable between CPUs), else the host's as Numba
    # sees them (without the avx* ones under NUMBA_ENABLE_AVX=0)
    features = config.CPU_FEATURES
    if features is None:
        features = get_host_cpu_features()
    return 64 if "+avx512f" in features.split(",") else 32


#: bytes of one vector
VECTOR_BYTES = _vector_bytes()


class Vec(types.Type):
    """An LLVM vector of ``lanes`` elements of ``dtype``, held in a register."""

    def __init__(self, dtype: types.Type, lanes: int) -> None:
        self.dtype, self.lanes = dtype, lanes
        super().__init__(name=f"Vec({dtype} x {lanes})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        elt = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(elt, fe_type.lanes))


def _vec_of(dtype: types.Type) -> Vec:
    return Vec(dtype, VECTOR_BYTES // (dtype.bitwidth // 8))


def _c_array(a: types.Type, writes: bool = False) -> bool:
    return (isinstance(a, types.Array) and a.layout == "C" and isinstance(a.dtype, types.Float)
            and (a.mutable or not writes))


def _pointer(context, builder, aryty, ary, i):
    return builder.gep(context.make_array(aryty)(context, builder, ary).data, [i])


@intrinsic
def vload(typingctx, a, i):
    """a.flat[i : i + lanes] of a C-contiguous float array."""
    if not (_c_array(a) and isinstance(i, types.Integer)):
        return None
    vt = _vec_of(a.dtype)

    def codegen(context, builder, sig, args):
        p = _pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.load(builder.bitcast(p, context.get_value_type(vt).as_pointer()),
                            align=a.dtype.bitwidth // 8)
    return vt(a, i), codegen


@intrinsic
def vstore(typingctx, a, i, v):
    """a.flat[i : i + lanes] = v (a writable C-contiguous float array)."""
    if not (_c_array(a, writes=True) and isinstance(i, types.Integer)
            and v == _vec_of(a.dtype)):
        return None

    def codegen(context, builder, sig, args):
        p = _pointer(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(p, args[2].type.as_pointer()),
                      align=a.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.none(a, i, v), codegen


def _first_mask(context, builder, count, n, lanes):
    """The mask of the first ``count`` of ``lanes`` lanes (count taken as a 32-bit int)."""
    i32 = ir.IntType(32)
    count = context.cast(builder, count, n, types.int32)
    lane = ir.Constant(ir.VectorType(i32, lanes), list(range(lanes)))
    return builder.icmp_signed("<", lane, _splat(builder, lane.type, count))


def _masked_name(op, ty, bitwidth):
    # the pointer's part of the name: p0 for opaque pointers, p0v8f32 for LLVM 14's
    # typed ones; LLVM upgrades the forms it no longer takes as it parses (llvmlite
    # 0.44's LLVM 15 with typed pointers, LLVM 22's alignment as an attribute): verified
    # with Numba 0.59 (LLVM 14), 0.61 (15) and 0.68 (22)
    vt = f"v{ty.count}f{bitwidth}"
    return f"llvm.masked.{op}.{vt}.p0{'' if _OPAQUE_POINTERS else vt}"


@intrinsic
def vload_first(typingctx, a, i, n):
    """a.flat[i : i + n] in the first n lanes, zeros in the rest: one masked load
    (``llvm.masked.load``), which reads nothing past n, so the vector may reach past the
    array's end (a row's units past its last whole vector)."""
    if not (_c_array(a) and isinstance(i, types.Integer) and isinstance(n, types.Integer)):
        return None
    vt = _vec_of(a.dtype)

    def codegen(context, builder, sig, args):
        ty, i32 = context.get_value_type(vt), ir.IntType(32)
        p = builder.bitcast(_pointer(context, builder, sig.args[0], args[0], args[1]),
                            ty.as_pointer())
        mask = _first_mask(context, builder, args[2], n, ty.count)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ty, [p.type, i32, mask.type, ty]),
            _masked_name("load", ty, a.dtype.bitwidth))
        return builder.call(fn, [p, ir.Constant(i32, a.dtype.bitwidth // 8), mask,
                                 ir.Constant(ty, None)])
    return vt(a, i, n), codegen


@intrinsic
def vstore_first(typingctx, a, i, v, n):
    """a.flat[i : i + n] = v's first n lanes (none where n <= 0, all from lanes; n is taken
    as a 32-bit int): one masked store (``llvm.masked.store``), which neither reads nor
    writes the lanes past n, so the vector may reach past the array's end. Why not a loop
    over the n elements: in lone-row's step (``lone_row.store_vector``) such a loop, even never
    run, took the LSTM training forward at B1 T1000 H32 from 0.26-0.44 to 0.64-1.12 ms."""
    if not (_c_array(a, writes=True) and isinstance(i, types.Integer)
            and v == _vec_of(a.dtype) and isinstance(n, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ty, i32 = args[2].type, ir.IntType(32)
        p = builder.bitcast(_pointer(context, builder, sig.args[0], args[0], args[1]),
                            ty.as_pointer())
        mask = _first_mask(context, builder, args[3], n, ty.count)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ty, p.type, i32, mask.type]),
            _masked_name("store", ty, a.dtype.bitwidth))
        builder.call(fn, [args[2], p, ir.Constant(i32, a.dtype.bitwidth // 8), mask])
        return context.get_dummy_value()
    return types.none(a, i, v, n), codegen


def _splat(builder, ty, x):
    v = builder.insert_element(ir.Constant(ty, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), ty.count), [0] * ty.count)
    return builder.shuffle_vector(v, ir.Constant(ty, ir.Undefined), zeros)


@intrinsic
def vbcast(typingctx, a, i):
    """a.flat[i] in every lane."""
    if not (_c_array(a) and isinstance(i, types.Integer)):
        return None
    vt = _vec_of(a.dtype)

    def codegen(context, builder, sig, args):
        x = builder.load(_pointer(context, builder, sig.args[0], args[0], args[1]))
        return _splat(builder, context.get_value_type(vt), x)
    return vt(a, i), codegen


@intrinsic
def vsplat(typingctx, x, like):
    """The scalar x, converted to like's element type, in every lane of a vector like
    ``like`` (a Vec)."""
    if not (isinstance(like, Vec) and isinstance(x, (types.Float, types.Integer))):
        return None

    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], x, like.dtype)
        return _splat(builder, context.get_value_type(like), v)
    return like(x, like), codegen


@intrinsic
def vzero(typingctx, a):
    """A vector of zeros of a's dtype."""
    if not _c_array(a):
        return None
    vt = _vec_of(a.dtype)

    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(vt), None)
    return vt(a), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c, lane by lane (or of three scalars of one float type): one fused
    instruction where the CPU has FMA (``llvm.fmuladd``: a multiply and an add where it has
    not, never a libm call)."""
    if not ((isinstance(a, Vec) or isinstance(a, types.Float)) and a == b == c):
        return None

    def codegen(context, builder, sig, args):
        ty = args[0].type
        bits = a.dtype.bitwidth if isinstance(a, Vec) else a.bitwidth
        name = f"llvm.fmuladd.v{ty.count}f{bits}" if isinstance(a, Vec) else f"llvm.fmuladd.f{bits}"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty] * 3), name)
        return builder.call(fn, args)
    return a(a, b, c), codegen


def lanes(a):
    """Elements of a's dtype in one vector, a compile-time constant."""
    return VECTOR_BYTES // a.itemsize


@overload(lanes)
def _ol_lanes(a):
    n = _vec_of(a.dtype).lanes
    return lambda a: n


# ----------------------------------------------------------------------------
# arithmetic


def _binary(instruction: str):
    """An intrinsic applying the LLVM float instruction lane by lane to two vectors."""
    @intrinsic
    def op(typingctx, a, b):
        if not (isinstance(a, Vec) and a == b):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, instruction)(*args)
        return a(a, b), codegen
    return op


_OPS = {operator.add: _binary("fadd"), operator.sub: _binary("fsub"),
        operator.mul: _binary("fmul"), operator.truediv: _binary("fdiv")}


def _overload_operator(pyop, vop) -> None:
    @overload(pyop)
    def _ol(a, b):
        if isinstance(a, Vec) and a == b:
            return lambda a, b: vop(a, b)
        if isinstance(a, Vec) and isinstance(b, (types.Float, types.Integer)):
            return lambda a, b: vop(a, vsplat(b, a))
        if isinstance(b, Vec) and isinstance(a, (types.Float, types.Integer)):
            return lambda a, b: vop(vsplat(a, b), b)
        return None


for _pyop, _vop in _OPS.items():
    _overload_operator(_pyop, _vop)


@overload(operator.neg)
def _ol_neg(a):
    if isinstance(a, Vec):
        return lambda a: vzero_like(a) - a
    return None


@intrinsic
def vzero_like(typingctx, v):
    """A vector of zeros like v."""
    if not isinstance(v, Vec):
        return None

    def codegen(context, builder, sig, args):
        return ir.Constant(args[0].type, None)
    return v(v), codegen


def _select(predicate: str):
    """An intrinsic: lane by lane, a if ``a <predicate> b`` else b (a NaN in a gives b,
    as the scalar ``a if a < b else b`` does)."""
    @intrinsic
    def op(typingctx, a, b):
        if not (isinstance(a, Vec) and a == b):
            return None

        def codegen(context, builder, sig, args):
            return builder.select(builder.fcmp_ordered(predicate, *args), *args)
        return a(a, b), codegen
    return op


_vmin, _vmax = _select("<"), _select(">")


def minimum(a, b):
    """a if a < b else b, for two scalars, two vectors or a vector and a scalar."""
    return a if a < b else b


def maximum(a, b):
    """a if a > b else b, for two scalars, two vectors or a vector and a scalar."""
    return a if a > b else b


def _overload_select(pyfunc, vop) -> None:
    @overload(pyfunc)
    def _ol(a, b):
        if isinstance(a, Vec) and a == b:
            return lambda a, b: vop(a, b)
        if isinstance(a, Vec):
            return lambda a, b: vop(a, vsplat(b, a))
        if isinstance(b, Vec):
            return lambda a, b: vop(vsplat(a, b), b)
        return pyfunc


_overload_select(minimum, _vmin)
_overload_select(maximum, _vmax)


# ----------------------------------------------------------------------------
# scalar math on every lane


def _per_lane(fn):
    """An intrinsic applying Numba's implementation of ``fn`` (a scalar float function
    of ``math``) to each lane of a vector."""
    @intrinsic
    def op(typingctx, v):
        if not isinstance(v, Vec):
            return None

        def codegen(context, builder, sig, args):
            impl = context.get_function(fn, signature(v.dtype, v.dtype))
            out = args[0]
            for k in range(v.lanes):
                i = ir.Constant(ir.IntType(32), k)
                out = builder.insert_element(
                    out, impl(builder, [builder.extract_element(args[0], i)]), i)
            return out
        return v(v), codegen
    return op


#: math.tanh and math.exp of every lane
vtanh_libm, vexp_libm = _per_lane(math.tanh), _per_lane(math.exp)


@intrinsic
def vsum(typingctx, v):
    """The sum of v's lanes, added in lane order (the same result on every run)."""
    if not isinstance(v, Vec):
        return None

    def codegen(context, builder, sig, args):
        s = builder.extract_element(args[0], ir.Constant(ir.IntType(32), 0))
        for k in range(1, v.lanes):
            s = builder.fadd(s, builder.extract_element(args[0], ir.Constant(ir.IntType(32), k)))
        return s
    return v.dtype(v), codegen


@intrinsic
def where_positive(typingctx, a, d):
    """Lane by lane, d where a > 0, else 0 (the gradient through a ReLU, from its
    output a)."""
    if not (isinstance(a, Vec) and a == d):
        return None

    def codegen(context, builder, sig, args):
        zero = ir.Constant(args[0].type, None)
        return builder.select(builder.fcmp_ordered(">", args[0], zero), args[1], zero)
    return a(a, d), codegen


@njit(inline="always")
def vload_upto(a, i, n):
    """``vload`` where n >= lanes, else ``vload_first``: the last vector of a row of units
    that is not a whole number of vectors."""
    if n >= lanes(a):
        return vload(a, i)
    return vload_first(a, i, n)


@njit(inline="always")
def vstore_upto(a, i, v, n):
    """``vstore`` where n >= lanes, else ``vstore_first``."""
    if n >= lanes(a):
        vstore(a, i, v)
    else:
        vstore_first(a, i, v, n)
