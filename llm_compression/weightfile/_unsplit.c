/* Join byte-stream-split 2-byte floats and upcast them to float32 in one pass (docs/format.md).
 *
 * A float16/bfloat16 tensor of n elements is stored as n low bytes followed by n high bytes.
 * numpy needs three passes over the data for that (shift, or, cast) with a scratch buffer; this loop
 * reads each byte once and writes each float32 once, vectorized by gcc (SSE2 everywhere on x86-64,
 * AVX2 where the CPU has it, NEON on aarch64). It is exact: every float16 value, subnormals, signed
 * zeros, infinities and NaN payloads included, maps to the float32 with the same value; bfloat16 bits
 * are float32's upper half. The GIL is released, so decode threads run it in parallel.
 *
 * Python API (buffers through the buffer protocol; sizes are checked). The two byte streams come as
 * separate buffers, so a caller can stream the high bytes through a cache-sized piece:
 *   float16_to_float32(low, high, out)    low, high: n bytes each, out: writable 4n bytes
 *   bfloat16_to_float32(low, high, out)
 *   join16(low, high, out)                out: writable 2n bytes, the interleaved little-endian elements
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* float16 bits -> float32 bits without branches, so the loop vectorizes:
 *   normal:    exponent rebased from 15 to 127, i.e. + (127 - 15) << 23 on the shifted bits;
 *   inf/NaN:   exponent 31 -> 255, i.e. the same rebase twice;
 *   subnormal: m * 2^-24 computed in float32 (exact: m < 2^10).                               */
#define F16_EXP_REBASE 0x38000000u /* (127 - 15) << 23 */
#define F16_TWO_POW_M24 5.9604644775390625e-08f

static inline uint32_t half_bits_to_float_bits(uint32_t h) {
    uint32_t em = h & 0x7fffu;
    uint32_t special = 0u - (uint32_t)(em >= 0x7c00u);
    uint32_t subnormal = 0u - (uint32_t)(em < 0x0400u);
    uint32_t bits = (em << 13) + F16_EXP_REBASE + (special & F16_EXP_REBASE);
    float tiny = (float)(int32_t)em * F16_TWO_POW_M24;
    uint32_t tiny_bits;
    memcpy(&tiny_bits, &tiny, sizeof tiny_bits);
    bits = (bits & ~subnormal) | (tiny_bits & subnormal);
    return bits | ((h & 0x8000u) << 16);
}

#define DEFINE_LOOPS(SUFFIX, ATTR)                                                                 \
    ATTR static void f16_loop_##SUFFIX(const uint8_t *restrict lo, const uint8_t *restrict hi,     \
                                       uint32_t *restrict out, Py_ssize_t n) {                     \
        for (Py_ssize_t i = 0; i < n; i++)                                                         \
            out[i] = half_bits_to_float_bits((uint32_t)lo[i] | ((uint32_t)hi[i] << 8));            \
    }                                                                                              \
    ATTR static void bf16_loop_##SUFFIX(const uint8_t *restrict lo, const uint8_t *restrict hi,    \
                                        uint32_t *restrict out, Py_ssize_t n) {                    \
        for (Py_ssize_t i = 0; i < n; i++)                                                         \
            out[i] = ((uint32_t)lo[i] << 16) | ((uint32_t)hi[i] << 24);                            \
    }

typedef void (*loop_fn)(const uint8_t *, const uint8_t *, uint32_t *, Py_ssize_t);

DEFINE_LOOPS(portable, )
#if defined(__x86_64__) && defined(__GNUC__)
DEFINE_LOOPS(avx2, __attribute__((target("avx2"))))
static int has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}
#else
#define f16_loop_avx2 f16_loop_portable
#define bf16_loop_avx2 bf16_loop_portable
static int has_avx2(void) { return 0; }
#endif

static loop_fn f16_loop = f16_loop_portable;
static loop_fn bf16_loop = bf16_loop_portable;

/* Parse (low, high, out), check out holds `out_per_element` bytes per element, run `loop`. */
static PyObject *run_loop(PyObject *args, loop_fn loop, Py_ssize_t out_per_element) {
    Py_buffer low, high, out;
    if (!PyArg_ParseTuple(args, "y*y*w*", &low, &high, &out)) return NULL;
    Py_ssize_t n = low.len;
    PyObject *result = Py_None;
    if (high.len != n || out.len != n * out_per_element) {
        PyErr_Format(PyExc_ValueError,
                     "expected two byte streams of n bytes each and an output of %zd * n bytes; got "
                     "%zd low bytes, %zd high bytes and %zd output bytes",
                     out_per_element, low.len, high.len, out.len);
        result = NULL;
    } else {
        Py_BEGIN_ALLOW_THREADS;
        loop((const uint8_t *)low.buf, (const uint8_t *)high.buf, (uint32_t *)out.buf, n);
        Py_END_ALLOW_THREADS;
    }
    PyBuffer_Release(&low);
    PyBuffer_Release(&high);
    PyBuffer_Release(&out);
    Py_XINCREF(result);
    return result;
}

static void join_loop(const uint8_t *lo, const uint8_t *hi, uint32_t *out, Py_ssize_t n) {
    uint16_t *dst = (uint16_t *)out; /* the caller's buffer holds n uint16 */
    for (Py_ssize_t i = 0; i < n; i++) dst[i] = (uint16_t)(lo[i] | (hi[i] << 8));
}

static PyObject *py_f16(PyObject *self, PyObject *args) { return run_loop(args, f16_loop, 4); }
static PyObject *py_bf16(PyObject *self, PyObject *args) { return run_loop(args, bf16_loop, 4); }
static PyObject *py_join16(PyObject *self, PyObject *args) { return run_loop(args, join_loop, 2); }

static PyMethodDef methods[] = {
    {"float16_to_float32", py_f16, METH_VARARGS, "(low, high, out): float16 byte streams -> float32."},
    {"bfloat16_to_float32", py_bf16, METH_VARARGS, "(low, high, out): bfloat16 byte streams -> float32."},
    {"join16", py_join16, METH_VARARGS, "(low, high, out): byte streams -> 2-byte elements."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_unsplit", NULL, -1, methods};

PyMODINIT_FUNC PyInit__unsplit(void) {
    if (has_avx2()) {
        f16_loop = f16_loop_avx2;
        bf16_loop = bf16_loop_avx2;
    }
    return PyModule_Create(&module);
}
