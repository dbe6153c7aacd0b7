/* One pass of a group-quantized transformer on the CPU: a causal LM's decoder step
 * (core.native_decoder; decision 0015) or a BERT-style encoder (core.native_encoder; 0016).
 *
 * Why C: a decode step streams every weight once; ONNX Runtime's MatMulNBits reads int8 rows at
 * 13.5-16 GB/s here while the memory delivers ~27 GB/s (decision 0011), and a custom ORT operator
 * needs ORT's C API header, which no installed package ships. This file is the whole step:
 * RMSNorm, the matmuls, rotary positions, attention over the caller's KV cache, SwiGLU, the head.
 *
 * Weights (docs/format.md, "Group-wise layouts"), rows x cols, cols a multiple of 32:
 *   int8: q int8, one scale a group of 32:  w = d * q
 *   int4: q 0..15 two a byte (element 2j low nibble of byte j), a scale and an offset a group:
 *         w = d * q + m
 * scales and offsets float16 (a GGUF's, load-time quantization) or float32 (a channel scale).
 * create() repacks them into tiles of 16 rows (Mat, below) and keeps only that copy: one 512-bit
 * vector then holds four inputs of each of the 16 rows, so one vpdpbusd (AVX512-VNNI: unsigned
 * weight byte times signed activation byte, int8 weights stored + 128) with four inputs of the
 * activation broadcast adds into 16 rows' sums, and a group's 8 of them give 16 exact int32 dot
 * products: no horizontal sums, one scale vector a group for 16 rows, and the weights of a tile
 * read as one stream.
 * Activations are quantized to int8 a group of 32 (scale max|x| / 127, round to nearest even).
 * Per (weight row, activation row), group by group:
 *   int8: acc = fma(sum (q + 128) x - 128 sum x, d dx, acc)
 *   int4: acc = fma(sum q x, d dx, acc); acc = fma(m, dx sum x, acc)
 * float32 (kind 32; decision 0018): the caller's plain rows x cols matrix, viewed, not copied (a
 * torch model's own weights), activations unquantized; each (row, activation row) a dot product
 * of 16 partial sums (lane l: inputs k = l mod 16, fmaf in k's order) added by reduce16, then the
 * bias. A decode step's matrices at one row stream at the memory's rate, where oneDNN's float32
 * GEMV reads ~half of it (decision 0017).
 * Two kernels, one arithmetic: the AVX512 one (runtime dispatch) and a portable one doing the
 * same float operations in the same order (tests compare them bit for bit).
 *
 * Python API (buffers through the buffer protocol; sizes checked, ValueError otherwise):
 *   create(dims, eps, flags, threads, cos, sin, final_norm, head, layers) -> capsule
 *       dims: (n_layers, dim, n_heads, n_kv_heads, head_dim, mlp_dim, max_positions)
 *       flags: 1 = post norms (OLMo-2: x + norm(f(x))), 2 = q / k norms over the projections,
 *       4 = LayerNorm (a weight and a bias) instead of RMSNorm, 8 = norm after the residual
 *       (BERT: norm(x + f(x))), 16 = GELU (erf) over one up matrix instead of SwiGLU,
 *       32 = encoder: attention over the whole sequence, no head (encode, not step),
 *       64 = cross-attention after self-attention (Whisper's decoder: pre norms only; its keys
 *       and values given to step, computed by the caller from the encoder's output)
 *       cos / sin: rotary tables, or both None (no rotary positions)
 *       head / matrices: (kind 8 or 4, rows, cols, q, scales, offsets or None), the stored
 *       values (int8, or int4 bytes; scales and offsets float16 or float32), copied; or
 *       (32, rows, cols, values, None, None), float32 rows held as they are (every matrix of a
 *       model float32, or none); head and final_norm None for an encoder; final_norm a
 *       (weight, bias) pair with LayerNorm
 *       layers: an iterable of n_layers entries (qkv, o, gate_up, down, attn_norm, mlp_norm,
 *       q_norm|None, k_norm|None[, attn_norm_bias, mlp_norm_bias, qkv_bias, o_bias,
 *       gate_up_bias, down_bias: float32 or None[, cross_q, cross_o, cross_norm,
 *       cross_norm_bias, cross_q_bias, cross_o_bias: with flag 64]]); each entry is released
 *       once its matrices are copied
 *   step(model, embeds, B, S, past, caches, capacity, wanted, T, logits[, cross, memory])
 *       embeds B*S*dim float32; past B int32; caches 2*n_layers buffers of B*KV*capacity*D
 *       float32 (keys, values per layer, written at past[b] .. past[b] + S - 1); wanted B*T
 *       int64 positions in 0..S-1; logits B*T*vocab float32 (written); with flag 64, cross:
 *       2*n_layers buffers (keys, values a layer) of B (or 1: shared by every row) * heads *
 *       memory * D float32, memory the encoder's length
 *   encode(model, x, B, S, lengths)  x B*S*dim float32, replaced by the last layer's output;
 *       lengths B int32 in 1..S: row b's keys are its first lengths[b] positions
 *   lookup(model, ids, out)  ids int64 -> out len(ids)*dim float32: rows of the head, dequantized
 *       (a tied token table's lookups)
 *   matmul(matrix, x, M, out[, threads])  x M*cols float32 -> out M*rows float32 (tests,
 *       measurements)
 *   kernel() -> "avx512" or "portable";  set_kernel(name)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_X86 1
#define SIMD_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,fma,f16c")))
#endif
#if defined(HAVE_X86) && defined(__has_attribute)
#if __has_attribute(target_clones)
/* The same C compiled twice, picked at load: 512-bit vectors where the CPU has them. Elementwise
 * float operations in the same order (no contraction: -ffp-contract=off) give the same bits. */
#define WIDE __attribute__((target_clones("avx512f", "default")))
#endif
#endif
#ifndef WIDE
#define WIDE
#endif

#define GROUP 32
#define ROWS 16       /* weight rows a tile: one output lane each */
#define MAXM 8        /* activation rows sharing each weight load */
#define MAX_LAYERS 4096
#ifndef DISTANCE
#define DISTANCE 1024 /* bytes of weights prefetched ahead */
#endif

/* A matrix in the kernel's tile layout (repacked at create; the model owns it). Tile t holds rows
 * 16t .. 16t + 15 (the last tile padded with zero weights); within a tile, group g (inputs 32g ..
 * 32g + 31) is one block: int8 8 vectors of 64 bytes, vector i byte 4l + b = row l's input 4i + b,
 * stored + 128; int4 4 vectors, the low nibbles as int8's vector 2v, the high nibbles vector
 * 2v + 1. Scales (and int4 offsets) a block: 16 values, row l's in lane l, float16 or float32;
 * or (an int8_sym_channel file's) one float32 scale a row, 16 a tile. */
enum { SCALES_F32, SCALES_F16, SCALES_ROW };

typedef struct {
    int kind, scales; /* 8, 4 or 32 (float32); SCALES_* */
    Py_ssize_t rows, cols, tiles;
    uint8_t *q;
    void *scale, *offset; /* tiles x groups x 16 (SCALES_ROW: tiles x 16); offset: int4 only */
    Py_buffer plain;      /* kind 32: the caller's rows x cols floats, held (not tiles) */
    const float *f;       /* kind 32: plain.buf */
} Mat;

enum { POST_NORMS = 1, QK_NORMS = 2, LAYER_NORM = 4, NORM_AFTER = 8, GELU = 16, ENCODER = 32,
       CROSS = 64 };

typedef struct {
    Mat qkv, o, gate_up, down;
    const float *attn_norm, *mlp_norm, *q_norm, *k_norm;
    const float *attn_norm_b, *mlp_norm_b; /* LayerNorm's biases */
    const float *bias[4];                  /* qkv, o, gate_up, down; NULL: none */
    Mat cross_q, cross_o;                  /* CROSS: the cross-attention's query and output */
    const float *cross_norm, *cross_norm_b, *cross_bias[2];
} Layer;

typedef struct {
    int n_layers, dim, heads, kv_heads, head_dim, mlp_dim, max_pos, flags, threads;
    int exact; /* float32 matrices (kind 32): activations stay float32 */
    float eps;
    const float *cos, *sin, *final_norm, *final_norm_b; /* _b: LayerNorm's bias */
    Mat head;
    Layer *layers;
    Py_buffer *views; /* every buffer held, released with the capsule */
    int n_views;
} Model;

/* An activation, M rows of cols quantized to int8 a group of 32 (inputs in their order). Rows
 * come in blocks of MAXM, each block group by group (act_at): the kernel finds a block's rows at
 * fixed offsets from one pointer, and broadcasts their inputs straight from memory. */
typedef struct {
    Py_ssize_t cols;
    int8_t *q;     /* 32 bytes at act_at(m, g) * 32 */
    float *dx;     /* at act_at(m, g): the group's scale */
    int32_t *init; /* -128 * sum q: int8 weights are stored + 128 */
    float *sx;     /* dx * sum q: int4's offset term */
    float *fx;     /* a float32 model's rows as they are (M x cols; then q and the rest NULL) */
} Act;

static int use_simd = 0;

/* a * b * ... (n factors, each >= 0), or -1 where the product overflows: sizes come from the
 * caller, and a wrapped product could match a small buffer. */
static Py_ssize_t product(int n, const Py_ssize_t *factor) {
    Py_ssize_t out = 1;
    for (int i = 0; i < n; i++)
        if (factor[i] < 0 || __builtin_mul_overflow(out, factor[i], &out))
            return -1;
    return out;
}

#define PRODUCT(...) product(sizeof((Py_ssize_t[]){__VA_ARGS__}) / sizeof(Py_ssize_t),            \
                             (Py_ssize_t[]){__VA_ARGS__})

#define ROUNDING 12582912.0f /* 1.5 * 2^23 */

static Py_ssize_t block_bytes(int kind) { return kind == 8 ? ROWS * GROUP : ROWS * GROUP / 2; }

/* float16 bits -> float32, exactly (subnormals, infinities and NaN included) */
static float half_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
    float f;
    if (exp == 0) {
        f = ldexpf((float)mant, -24);
        return sign ? -f : f;
    }
    uint32_t bits = sign | (exp == 31 ? 0x7F800000u | (mant << 13) : ((exp + 112) << 23) | (mant << 13));
    memcpy(&f, &bits, sizeof f);
    return f;
}

static float mat_value(const void *v, int half, Py_ssize_t i) {
    return half ? half_float(((const uint16_t *)v)[i]) : ((const float *)v)[i];
}

/* Row l of tile t's scale for group g (w: groups of cols / 32 a row). */
static float scale_of(const Mat *w, Py_ssize_t t, Py_ssize_t g, int l) {
    if (w->scales == SCALES_ROW)
        return ((const float *)w->scale)[t * ROWS + l];
    return mat_value(w->scale, w->scales == SCALES_F16, (t * (w->cols / GROUP) + g) * ROWS + l);
}

/* e^x for the softmax and SiLU from elementwise operations only, so that the compiler vectorizes
 * the loops around it and every build gives the same bits (libm's expf is a call per element:
 * ~2 ms of a step of 8 rows). Cephes' expf: x = n ln 2 + r, |r| <= ln 2 / 2, a degree-6
 * polynomial, relative error ~1e-7; x clamped to [-87.3, 88] (e^x from ~1e-38 to ~1.7e38). */
static inline float exp_poly(float x) {
    x = x < -87.3f ? -87.3f : x > 88.0f ? 88.0f : x;
    float n = (x * 1.44269504088896341f + ROUNDING) - ROUNDING; /* nearest integer */
    float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;  /* ln 2 in two parts */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = (p * r) * r + r + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23; /* 2^n, n in -126 .. 127 */
    float two;
    memcpy(&two, &bits, sizeof two);
    return p * two;
}

/* ---- activations ---- */

/* Where row m's group g lies in an activation's arrays (q: times 32). */
static inline Py_ssize_t act_at(const Act *a, Py_ssize_t m, Py_ssize_t g) {
    return ((m / MAXM) * (a->cols / GROUP) + g) * MAXM + m % MAXM;
}

/* max |v| of 32 floats as the largest bit pattern without the sign (vectorizes) */
static inline uint32_t group_bits(const float *v) {
    uint32_t bits = 0;
    for (int k = 0; k < GROUP; k++) {
        uint32_t b;
        memcpy(&b, v + k, sizeof b);
        b &= 0x7fffffffu;
        bits = b > bits ? b : bits;
    }
    return bits;
}

/* Row m of x (its own cols floats) into a: each group of 32 scaled by its largest |v|. */
WIDE static void quantize_row(const float *x, Act *a, Py_ssize_t m) {
    for (Py_ssize_t g = 0; g < a->cols / GROUP; g++) {
        const float *v = x + g * GROUP;
        Py_ssize_t at = act_at(a, m, g);
        int8_t *q = a->q + at * GROUP;
        uint32_t bits = group_bits(v);
        float top;
        memcpy(&top, &bits, sizeof top);
        float inv = top > 0.0f ? 127.0f / top : 0.0f;
        int sum = 0;
        for (int k = 0; k < GROUP; k++) {
            /* |v| <= 127 (+ rounding): adding and subtracting 1.5 * 2^23 rounds to the nearest
             * integer, ties to even (lrintf's rounding, without the call) */
            float r = (v[k] * inv + ROUNDING) - ROUNDING;
            r = r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r;
            q[k] = (int8_t)r;
            sum += (int)r;
        }
        a->dx[at] = top / 127.0f;
        a->init[at] = -128 * sum;
        a->sx[at] = a->dx[at] * (float)sum;
    }
}

static int act_alloc(Act *a, Py_ssize_t M, Py_ssize_t cols, int exact) {
    Py_ssize_t rows = (M + MAXM - 1) / MAXM * MAXM, groups = rows * (cols / GROUP);
    a->cols = cols;
    if (exact) {
        a->fx = malloc((size_t)(rows * cols) * sizeof(float));
        return a->fx != NULL;
    }
    a->q = malloc((size_t)(rows * cols));
    a->dx = malloc((size_t)groups * sizeof(float));
    a->init = malloc((size_t)groups * sizeof(int32_t));
    a->sx = malloc((size_t)groups * sizeof(float));
    return a->q && a->dx && a->init && a->sx;
}

static void act_free(Act *a) {
    free(a->q);
    free(a->dx);
    free(a->init);
    free(a->sx);
    free(a->fx);
}

#ifdef HAVE_X86
/* quantize_row with intrinsics: the same operations on 16 lanes (the largest |v| as bits, the
 * rounding by adding and subtracting 1.5 * 2^23, the clamp, an exact int sum), the same bytes. */
SIMD_TARGET static inline __m512i group_bits_avx512(const float *v) {
    const __m512i magnitude = _mm512_set1_epi32(0x7fffffff);
    return _mm512_max_epu32(_mm512_and_si512(_mm512_loadu_si512(v), magnitude),
                            _mm512_and_si512(_mm512_loadu_si512(v + 16), magnitude));
}

SIMD_TARGET static void quantize_row_avx512(const float *x, Act *a, Py_ssize_t m) {
    const __m512 rounding = _mm512_set1_ps(ROUNDING), hi = _mm512_set1_ps(127.0f),
                 lo = _mm512_set1_ps(-127.0f);
    for (Py_ssize_t g = 0; g < a->cols / GROUP; g++) {
        __m512 v0 = _mm512_loadu_ps(x + g * GROUP), v1 = _mm512_loadu_ps(x + g * GROUP + 16);
        __m512i b = group_bits_avx512(x + g * GROUP);
        uint32_t bits = (uint32_t)_mm512_reduce_max_epu32(b);
        float top;
        memcpy(&top, &bits, sizeof top);
        __m512 inv = _mm512_set1_ps(top > 0.0f ? 127.0f / top : 0.0f);
        __m512 r0 = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(v0, inv), rounding), rounding);
        __m512 r1 = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(v1, inv), rounding), rounding);
        __m512i q0 = _mm512_cvttps_epi32(_mm512_max_ps(_mm512_min_ps(r0, hi), lo));
        __m512i q1 = _mm512_cvttps_epi32(_mm512_max_ps(_mm512_min_ps(r1, hi), lo));
        Py_ssize_t at = act_at(a, m, g);
        _mm_storeu_si128((__m128i *)(a->q + at * GROUP), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(a->q + at * GROUP + 16), _mm512_cvtepi32_epi8(q1));
        int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        a->dx[at] = top / 127.0f;
        a->init[at] = -128 * sum;
        a->sx[at] = a->dx[at] * (float)sum;
    }
}
#endif

static void quantize_one(Act *a, const float *x, Py_ssize_t m) {
    if (a->fx) { /* float32: the row as it is */
        memcpy(a->fx + m * a->cols, x + m * a->cols, (size_t)a->cols * sizeof(float));
        return;
    }
#ifdef HAVE_X86
    if (use_simd) {
        quantize_row_avx512(x + m * a->cols, a, m);
        return;
    }
#endif
    quantize_row(x + m * a->cols, a, m);
}

static void quantize(Act *a, const float *x, Py_ssize_t M) {
    for (Py_ssize_t m = 0; m < M; m++)
        quantize_one(a, x, m);
}

/* BODY for each row m of a batch (M rows, independent): split over the threads above
 * SERIAL_ROWS rows; fewer run without entering OpenMP, whose fork and join cost more than a norm
 * or a SwiGLU of a few rows (SmolLM2 int8, a step of 8 / 4 rows: 11.3 / 8.9 -> 10.3 / 8.0 ms;
 * MiniLM's 32 rows: 2.09 ms split, 2.34 ms not). */
#define SERIAL_ROWS 16
#define FOR_ROWS(md, M, BODY)                                                                      \
    do {                                                                                           \
        if ((M) > SERIAL_ROWS && (md)->threads > 1) {                                              \
            _Pragma("omp parallel for schedule(static) num_threads((md)->threads)")               \
            for (Py_ssize_t m = 0; m < (M); m++)                                                   \
                BODY;                                                                              \
        } else {                                                                                   \
            for (Py_ssize_t m = 0; m < (M); m++)                                                   \
                BODY;                                                                              \
        }                                                                                          \
    } while (0)

/* ---- the dot products ---- */

/* 16 partial sums added in a fixed order (a tree: every build gives the same bits). */
static float reduce16(const float *f) {
    float t8[8], t4[4];
    for (int i = 0; i < 8; i++)
        t8[i] = f[i] + f[i + 8];
    for (int i = 0; i < 4; i++)
        t4[i] = t8[i] + t8[i + 4];
    return (t4[0] + t4[2]) + (t4[1] + t4[3]);
}

/* sum a[d] b[d] in 16 partial sums (which the compiler vectorizes), then reduce16. */
static float dot16(const float *a, const float *b, int n) {
    float part[16] = {0}, tail = 0.0f;
    int d = 0;
    for (; d + 16 <= n; d += 16)
        for (int l = 0; l < 16; l++)
            part[l] += a[d + l] * b[d + l];
    for (; d < n; d++)
        tail += a[d] * b[d];
    return reduce16(part) + tail;
}

/* sum x[d] as dot16 sums products. */
static float sum16(const float *x, int n) {
    float part[16] = {0}, tail = 0.0f;
    int d = 0;
    for (; d + 16 <= n; d += 16)
        for (int l = 0; l < 16; l++)
            part[l] += x[d + l];
    for (; d < n; d++)
        tail += x[d];
    return reduce16(part) + tail;
}

/* Row l's stored value k (0..31) in a block: int8 q + 128, int4 0..15. */
static int block_value(int kind, const uint8_t *block, int l, int k) {
    int i = k / 4, b = k % 4;
    if (kind == 8)
        return block[i * 64 + l * 4 + b];
    uint8_t byte = block[(i / 2) * 64 + l * 4 + b];
    return i % 2 ? byte >> 4 : byte & 0x0F;
}

/* Every (weight row r, activation row m) is this, from acc = the row's bias (or 0), group by
 * group: an exact int32 sum, then acc = fma(S, d_r dx_m, acc) (int4: then acc = fma(m_r,
 * dx_m sum q_m, acc)). The AVX512 kernel runs the same float operations in the same order, 16
 * rows a vector. */
static void tile_portable(const Mat *w, Py_ssize_t t, int n, const float *bias, const Act *a,
                          Py_ssize_t m0, int mc, float *out, Py_ssize_t ld) {
    Py_ssize_t groups = w->cols / GROUP, bb = block_bytes(w->kind);
    for (int j = 0; j < mc; j++) {
        Py_ssize_t m = m0 + j;
        for (int l = 0; l < n; l++) {
            float acc = bias ? bias[t * ROWS + l] : 0.0f;
            for (Py_ssize_t g = 0; g < groups; g++) {
                const uint8_t *block = w->q + (t * groups + g) * bb;
                Py_ssize_t ag = act_at(a, m, g);
                const int8_t *x = a->q + ag * GROUP;
                int32_t s = w->kind == 8 ? a->init[ag] : 0;
                for (int k = 0; k < GROUP; k++)
                    s += block_value(w->kind, block, l, k) * x[k];
                Py_ssize_t at = (t * groups + g) * ROWS + l;
                float ds = scale_of(w, t, g, l) * a->dx[ag];
                acc = fmaf((float)s, ds, acc);
                if (w->kind == 4)
                    acc = fmaf(mat_value(w->offset, w->scales == SCALES_F16, at), a->sx[ag], acc);
            }
            out[j * ld + t * ROWS + l] = acc;
        }
    }
}

#ifdef HAVE_X86
typedef int32_t __attribute__((may_alias, aligned(1))) int32_u; /* four activation bytes */

/* acc + the products of w's unsigned bytes and the four signed bytes at x, broadcast: one
 * vpdpbusd with an embedded broadcast (gcc 12 loads the broadcast into a register first, an
 * instruction more a call). */
SIMD_TARGET static inline __attribute__((always_inline)) __m512i
dpbusd_broadcast(__m512i acc, __m512i w, const int32_u *x) {
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*x));
    return acc;
}

SIMD_TARGET static inline __m512 lanes16(const void *v, int half, Py_ssize_t at) {
    if (half)
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)v + at)));
    return _mm512_loadu_ps((const float *)v + at);
}

/* Tile t (its first n rows written) times activation rows m0 .. m0 + mc - 1: out[j * ld + row].
 * Inlined into a copy per (kind, scales, mc), so that the accumulators stay in registers and
 * nothing branches inside the loop; each block's weights are loaded and unpacked once for all
 * mc activation rows, whose four inputs at a time are broadcast from memory. */
SIMD_TARGET static inline __attribute__((always_inline)) void
tile_avx512(const Mat *w, Py_ssize_t t, int n, const float *bias, const int kind,
            const int scales, const Act *a, Py_ssize_t m0, const int mc, float *out,
            Py_ssize_t ld) {
    Py_ssize_t groups = w->cols / GROUP, bb = block_bytes(kind);
    const uint8_t *q = w->q + t * groups * bb;
    __m512 acc[MAXM];
    for (int j = 0; j < mc; j++)
        acc[j] = bias ? _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), bias + t * ROWS)
                      : _mm512_setzero_ps();
    __m512 row_scales = scales == SCALES_ROW ? _mm512_loadu_ps((const float *)w->scale + t * ROWS)
                                             : _mm512_setzero_ps();
    for (Py_ssize_t g = 0; g < groups; g++) {
        const uint8_t *block = q + g * bb;
        __m512i wv[8];
        _mm_prefetch((const char *)block + DISTANCE, _MM_HINT_T0);
        _mm_prefetch((const char *)block + DISTANCE + 64, _MM_HINT_T0);
        if (kind == 8) {
            for (int i = 0; i < 8; i++)
                wv[i] = _mm512_loadu_si512(block + i * 64);
        } else {
            __m512i low = _mm512_set1_epi8(0x0F);
            for (int v = 0; v < 4; v++) {
                __m512i b = _mm512_loadu_si512(block + v * 64);
                wv[2 * v] = _mm512_and_si512(b, low);
                wv[2 * v + 1] = _mm512_and_si512(_mm512_srli_epi16(b, 4), low);
            }
        }
        Py_ssize_t at = (t * groups + g) * ROWS;
        int half = scales == SCALES_F16;
        __m512 d = scales == SCALES_ROW ? row_scales : lanes16(w->scale, half, at);
        __m512 off = kind == 4 ? lanes16(w->offset, half, at) : _mm512_setzero_ps();
        Py_ssize_t at0 = act_at(a, m0, g); /* m0: a block's first row */
        for (int j = 0; j < mc; j++) {
            Py_ssize_t ag = at0 + j;
            const int32_u *four = (const int32_u *)(a->q + ag * GROUP);
            __m512i s0 = _mm512_set1_epi32(kind == 8 ? a->init[ag] : 0), s1 = _mm512_setzero_si512();
            for (int i = 0; i < 8; i += 2) { /* two chains: the sums are exact either way */
                s0 = dpbusd_broadcast(s0, wv[i], four + i);
                s1 = dpbusd_broadcast(s1, wv[i + 1], four + i + 1);
            }
            __m512 ds = _mm512_mul_ps(d, _mm512_set1_ps(a->dx[ag]));
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), ds, acc[j]);
            if (kind == 4)
                acc[j] = _mm512_fmadd_ps(off, _mm512_set1_ps(a->sx[ag]), acc[j]);
        }
    }
    __mmask16 keep = (__mmask16)((1u << n) - 1);
    for (int j = 0; j < mc; j++)
        _mm512_mask_storeu_ps(out + j * ld + t * ROWS, keep, acc[j]);
}

#define TILE_CASE(KIND, MODE)                                                                      \
    switch (mc) {                                                                                  \
    case 1: tile_avx512(w, t, n, bias, KIND, MODE, a, m0, 1, out, ld); break;                      \
    case 2: tile_avx512(w, t, n, bias, KIND, MODE, a, m0, 2, out, ld); break;                      \
    case 3: tile_avx512(w, t, n, bias, KIND, MODE, a, m0, 3, out, ld); break;                      \
    case 4: tile_avx512(w, t, n, bias, KIND, MODE, a, m0, 4, out, ld); break;                      \
    case 5: tile_avx512(w, t, n, bias, KIND, MODE, a, m0, 5, out, ld); break;                      \
    case 6: tile_avx512(w, t, n, bias, KIND, MODE, a, m0, 6, out, ld); break;                      \
    case 7: tile_avx512(w, t, n, bias, KIND, MODE, a, m0, 7, out, ld); break;                      \
    default: tile_avx512(w, t, n, bias, KIND, MODE, a, m0, MAXM, out, ld); break;                  \
    }

SIMD_TARGET static void tiles_avx512(const Mat *w, Py_ssize_t t, int n, const float *bias,
                                     const Act *a, Py_ssize_t m0, int mc, float *out,
                                     Py_ssize_t ld) {
    if (w->kind == 8 && w->scales == SCALES_F16) {
        TILE_CASE(8, SCALES_F16)
    } else if (w->kind == 8 && w->scales == SCALES_ROW) {
        TILE_CASE(8, SCALES_ROW)
    } else if (w->kind == 8) {
        TILE_CASE(8, SCALES_F32)
    } else if (w->scales == SCALES_F16) {
        TILE_CASE(4, SCALES_F16)
    } else {
        TILE_CASE(4, SCALES_F32)
    }
}

static int simd_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512vnni");
}
#else
static int simd_available(void) { return 0; }
#endif

#define PLAIN_ROWS 4 /* float32 weight rows a pass: their 4 streams share each input load */
#define PLAIN_BLOCK 4 /* activation rows sharing each weight load */

#ifdef HAVE_X86
/* The 16 partial sums of PLAIN_ROWS weight rows by mb activation rows (cols a multiple of 16)
 * into sums[(j * PLAIN_ROWS + r) * 16 ..]: plain_rows' fmaf a lane in k's order, the sums held
 * in registers (16 accumulators, 4 weight and 1 input vector). */
SIMD_TARGET static inline __attribute__((always_inline)) void
plain_sums_avx512(const float *rows, Py_ssize_t cols, const float *x0, const int mb, float *sums) {
    __m512 acc[PLAIN_BLOCK][PLAIN_ROWS];
    for (int j = 0; j < mb; j++)
        for (int r = 0; r < PLAIN_ROWS; r++)
            acc[j][r] = _mm512_setzero_ps();
    for (Py_ssize_t k = 0; k < cols; k += 16) {
        __m512 w[PLAIN_ROWS];
        for (int r = 0; r < PLAIN_ROWS; r++)
            w[r] = _mm512_loadu_ps(rows + r * cols + k);
        for (int j = 0; j < mb; j++) {
            __m512 xv = _mm512_loadu_ps(x0 + j * cols + k);
            for (int r = 0; r < PLAIN_ROWS; r++)
                acc[j][r] = _mm512_fmadd_ps(w[r], xv, acc[j][r]);
        }
    }
    for (int j = 0; j < mb; j++)
        for (int r = 0; r < PLAIN_ROWS; r++)
            _mm512_storeu_ps(sums + (j * PLAIN_ROWS + r) * 16, acc[j][r]);
}

SIMD_TARGET static void plain_block_avx512(const float *rows, Py_ssize_t cols, const float *x0,
                                           int mb, float *sums) {
    switch (mb) { /* a copy a count: the accumulators stay in registers */
    case 1: plain_sums_avx512(rows, cols, x0, 1, sums); break;
    case 2: plain_sums_avx512(rows, cols, x0, 2, sums); break;
    case 3: plain_sums_avx512(rows, cols, x0, 3, sums); break;
    default: plain_sums_avx512(rows, cols, x0, PLAIN_BLOCK, sums); break;
    }
}
#endif

/* float32: out[m * ld + r] for rows r0 .. r0 + n - 1 (n <= PLAIN_ROWS) of w and activation rows
 * 0 .. M - 1: 16 partial sums (lane l: inputs k = l mod 16 in k's order, fmaf; the last
 * cols % 16 inputs into lanes 0 ..) added by reduce16, then the bias. The AVX512 code does the
 * same fmaf a lane in the same order (tests compare the two bit for bit); each weight vector it
 * loads serves PLAIN_BLOCK activation rows. */
static void plain_rows(const float *w, Py_ssize_t cols, Py_ssize_t r0, int n, const float *x,
                       Py_ssize_t M, const float *bias, float *out, Py_ssize_t ld) {
    Py_ssize_t full = cols - cols % 16;
    const float *rows = w + r0 * cols;
    for (Py_ssize_t m0 = 0; m0 < M; m0 += PLAIN_BLOCK) {
        int mb = (int)(M - m0 < PLAIN_BLOCK ? M - m0 : PLAIN_BLOCK);
        const float *x0 = x + m0 * cols;
        float s[PLAIN_BLOCK][PLAIN_ROWS][16];
        memset(s, 0, sizeof s);
#ifdef HAVE_X86
        if (use_simd && n == PLAIN_ROWS && full == cols)
            plain_block_avx512(rows, cols, x0, mb, &s[0][0][0]);
        else
#endif
            for (int j = 0; j < mb; j++)
                for (int r = 0; r < n; r++)
                    for (Py_ssize_t k = 0; k < full; k++)
                        s[j][r][k % 16] = fmaf(rows[r * cols + k], x0[j * cols + k], s[j][r][k % 16]);
        for (int j = 0; j < mb; j++)
            for (int r = 0; r < n; r++) {
                for (Py_ssize_t k = full; k < cols; k++)
                    s[j][r][k - full] = fmaf(rows[r * cols + k], x0[j * cols + k], s[j][r][k - full]);
                out[(m0 + j) * ld + r0 + r] = reduce16(s[j][r]) + (bias ? bias[r0 + r] : 0.0f);
            }
    }
}

/* out = x (M rows of w->cols floats) times the float32 matrix w^T (+ bias): the rows split over
 * the threads, PLAIN_ROWS at a time. */
static void plain_matmul(const Mat *w, const float *x, Py_ssize_t M, float *out, Py_ssize_t ld,
                         const float *bias, int threads) {
    Py_ssize_t passes = (w->rows + PLAIN_ROWS - 1) / PLAIN_ROWS;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (Py_ssize_t p = 0; p < passes; p++) {
        Py_ssize_t r0 = p * PLAIN_ROWS;
        int n = (int)(w->rows - r0 < PLAIN_ROWS ? w->rows - r0 : PLAIN_ROWS);
        plain_rows(w->f, w->cols, r0, n, x, M, bias, out, ld);
    }
}

/* out (M x w->rows, row stride ld) = quantized activation a (M rows) times w^T (+ bias: w->rows
 * floats, or NULL); a float32 matrix takes a's float rows. */
static void matmul(const Mat *w, const Act *a, Py_ssize_t M, float *out, Py_ssize_t ld,
                   const float *bias, int threads) {
    if (w->kind == 32) {
        plain_matmul(w, a->fx, M, out, ld, bias, threads);
        return;
    }
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (Py_ssize_t t = 0; t < w->tiles; t++) {
        int n = (int)(w->rows - t * ROWS < ROWS ? w->rows - t * ROWS : ROWS);
        for (Py_ssize_t m0 = 0; m0 < M; m0 += MAXM) {
            int mc = (int)(M - m0 < MAXM ? M - m0 : MAXM);
            float *o = out + m0 * ld;
#ifdef HAVE_X86
            if (use_simd)
                tiles_avx512(w, t, n, bias, a, m0, mc, o, ld);
            else
#endif
                tile_portable(w, t, n, bias, a, m0, mc, o, ld);
        }
    }
}

/* ---- the rest of a layer ---- */

WIDE static void rmsnorm(const float *x, const float *weight, int n, float eps, float *out) {
    float inv = 1.0f / sqrtf(dot16(x, x, n) / (float)n + eps);
    for (int i = 0; i < n; i++)
        out[i] = weight[i] * (x[i] * inv);
}

/* (x - mean) / sqrt(variance + eps) * weight + bias; out may be x. */
WIDE static void layernorm(const float *x, const float *weight, const float *bias, int n,
                           float eps, float *out) {
    float mean = sum16(x, n) / (float)n;
    for (int i = 0; i < n; i++)
        out[i] = x[i] - mean;
    float inv = 1.0f / sqrtf(dot16(out, out, n) / (float)n + eps);
    for (int i = 0; i < n; i++)
        out[i] = out[i] * inv * weight[i] + bias[i];
}

/* The model's norm of one row of dim floats (bias: LayerNorm's). */
static void norm_row(const Model *md, const float *x, const float *weight, const float *bias,
                     float *out) {
    if (md->flags & LAYER_NORM)
        layernorm(x, weight, bias, md->dim, md->eps, out);
    else
        rmsnorm(x, weight, md->dim, md->eps, out);
}

static void rotate(float *v, const float *cos, const float *sin, int half) {
    for (int i = 0; i < half; i++) {
        float a = v[i], b = v[i + half];
        v[i] = a * cos[i] - b * sin[i];
        v[i + half] = b * cos[i] + a * sin[i];
    }
}

typedef struct {
    const Model *md;
    Py_ssize_t B, S, capacity;
    const int32_t *past;
    float **caches;          /* 2 per layer */
    const int32_t *lengths;  /* an encoder's: row b attends to its first lengths[b] keys */
    float **cross;           /* CROSS: 2 per layer, (cross_rows, heads, memory, D) each */
    Py_ssize_t memory, cross_rows;
} Batch;

/* qkv (M x (H + 2 KV) D): norms, rotary positions, keys and values into the cache. */
WIDE static void place_keys(const Batch *bt, const Layer *ly, int layer, float *qkv, float *tmp) {
    const Model *md = bt->md;
    int D = md->head_dim, H = md->heads, KV = md->kv_heads, width = (H + 2 * KV) * D;
    for (Py_ssize_t b = 0; b < bt->B; b++)
        for (Py_ssize_t s = 0; s < bt->S; s++) {
            float *row = qkv + (b * bt->S + s) * width;
            Py_ssize_t pos = bt->past[b] + s;
            if (md->flags & QK_NORMS) {
                rmsnorm(row, ly->q_norm, H * D, md->eps, tmp);
                memcpy(row, tmp, (size_t)H * D * sizeof(float));
                rmsnorm(row + H * D, ly->k_norm, KV * D, md->eps, tmp);
                memcpy(row + H * D, tmp, (size_t)KV * D * sizeof(float));
            }
            for (int h = 0; md->cos && h < H + KV; h++)
                rotate(row + h * D, md->cos + pos * (D / 2), md->sin + pos * (D / 2), D / 2);
            for (int h = 0; h < KV; h++) {
                Py_ssize_t at = ((b * KV + h) * bt->capacity + pos) * D;
                memcpy(bt->caches[2 * layer] + at, row + (H + h) * D, (size_t)D * sizeof(float));
                memcpy(bt->caches[2 * layer + 1] + at, row + (H + KV + h) * D,
                       (size_t)D * sizeof(float));
            }
        }
}

/* score[0 .. pos] -> their softmax, in place (both attention builds). */
static inline __attribute__((always_inline)) void softmax(float *score, Py_ssize_t pos) {
    float top = -INFINITY, total = 0.0f;
    for (Py_ssize_t t = 0; t <= pos; t++)
        top = score[t] > top ? score[t] : top;
    for (Py_ssize_t t = 0; t <= pos; t++) {
        score[t] = exp_poly(score[t] - top);
        total += score[t];
    }
    for (Py_ssize_t t = 0; t <= pos; t++)
        score[t] = score[t] / total;
}

/* o = softmax(q . keys[t] / sqrt(D), t = 0 .. pos) values (score: pos + 1 floats). */
WIDE static void attend_head(const float *q, const float *keys, const float *values,
                             Py_ssize_t pos, int D, float *score, float *o) {
    float scale = 1.0f / sqrtf((float)D);
    for (Py_ssize_t t = 0; t <= pos; t++)
        score[t] = dot16(q, keys + t * D, D) * scale;
    softmax(score, pos);
    memset(o, 0, (size_t)D * sizeof(float));
    for (Py_ssize_t t = 0; t <= pos; t++)
        for (int d = 0; d < D; d++)
            o[d] += score[t] * values[t * D + d];
}

#ifdef HAVE_X86
/* reduce16's tree on a vector: (lanes 0-7 + 8-15), then (0-3 + 4-7), then ([0] + [2], [1] + [3]),
 * then the two: the same bits as reduce16. */
SIMD_TARGET static inline float reduce16_avx512(__m512 f) {
    __m256 t8 = _mm256_add_ps(_mm512_castps512_ps256(f), _mm512_extractf32x8_ps(f, 1));
    __m128 t4 = _mm_add_ps(_mm256_castps256_ps128(t8), _mm256_extractf128_ps(t8, 1));
    __m128 t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));
    return _mm_cvtss_f32(_mm_add_ss(t2, _mm_shuffle_ps(t2, t2, 1)));
}

/* attend_head with intrinsics, D a multiple of 16: the same float operations in the same order
 * (each key's 16 partial sums then reduce16's tree; each output summed over the positions in
 * order), so the same bits; the output's sums stay in registers, 64 at a time. */
SIMD_TARGET static void attend_head_avx512(const float *q, const float *keys,
                                           const float *values, Py_ssize_t pos, int D,
                                           float *score, float *o) {
    float scale = 1.0f / sqrtf((float)D);
    for (Py_ssize_t t = 0; t <= pos; t++) {
        const float *k = keys + t * D;
        __m512 part = _mm512_setzero_ps(); /* + 0 as dot16: the sign of a zero sum too */
        for (int d = 0; d < D; d += 16)
            part = _mm512_add_ps(part, _mm512_mul_ps(_mm512_loadu_ps(q + d), _mm512_loadu_ps(k + d)));
        score[t] = (reduce16_avx512(part) + 0.0f) * scale;
    }
    softmax(score, pos);
    for (int d0 = 0; d0 < D; d0 += 64) {
        int n = D - d0 < 64 ? (D - d0) / 16 : 4;
        __m512 sum[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                         _mm512_setzero_ps()};
        for (Py_ssize_t t = 0; t <= pos; t++) {
            __m512 w = _mm512_set1_ps(score[t]);
            const float *v = values + t * D + d0;
            for (int i = 0; i < n; i++)
                sum[i] = _mm512_add_ps(sum[i], _mm512_mul_ps(w, _mm512_loadu_ps(v + 16 * i)));
        }
        for (int i = 0; i < n; i++)
            _mm512_storeu_ps(o + d0 + 16 * i, sum[i]);
    }
}
#endif

/* One query head's attention on the kernel in use (the same bits on each). */
static void attend_one(const float *q, const float *keys, const float *values, Py_ssize_t pos,
                       int D, float *score, float *o) {
#ifdef HAVE_X86
    if (use_simd && D % 16 == 0) {
        attend_head_avx512(q, keys, values, pos, D, score, o);
        return;
    }
#endif
    attend_head(q, keys, values, pos, D, score, o);
}

/* out (M x H D): each query over its row's keys 0 .. its position (causal), an encoder's over
 * its row's first lengths[b] keys, or (cross) over every key of its row's encoder output; q:
 * rows of (H + 2 KV) D (qkv), of H D with cross; -1 when out of memory. (OpenMP stays out of
 * the cloned functions: inside one its team cost ~15 ms a step.) */
static int attend(const Batch *bt, int layer, const float *q, int cross, float *out) {
    const Model *md = bt->md;
    int D = md->head_dim, H = md->heads, KV = cross ? H : md->kv_heads, failed = 0;
    int width = cross ? H * D : (H + 2 * KV) * D;
    Py_ssize_t span = cross ? bt->memory : bt->capacity, jobs = bt->B * bt->S * H;
    float *const *kv = cross ? bt->cross : bt->caches;
#pragma omp parallel num_threads(md->threads) if (md->threads > 1 && jobs >= (cross ? 2 : 8)) \
    reduction(|:failed)
    {
        float *score = malloc((size_t)span * sizeof(float));
        failed = !score;
#pragma omp for schedule(static)
        for (Py_ssize_t job = 0; job < jobs; job++) {
            Py_ssize_t h = job % H, bs = job / H, b = bs / bt->S, kvh = h / (H / KV);
            Py_ssize_t at = ((cross && bt->cross_rows == 1 ? 0 : b) * KV + kvh) * span * D;
            Py_ssize_t last = cross         ? span - 1
                              : bt->lengths ? bt->lengths[b] - 1
                                            : bt->past[b] + bs % bt->S;
            if (score)
                attend_one(q + bs * width + h * D, kv[2 * layer] + at, kv[2 * layer + 1] + at,
                           last, D, score, out + bs * H * D + h * D);
        }
        free(score);
    }
    return failed ? -1 : 0;
}

WIDE static void residual_row(const Model *md, float *x, const float *y, const float *weight,
                              const float *bias, float *tmp) {
    if (md->flags & POST_NORMS) {
        rmsnorm(y, weight, md->dim, md->eps, tmp);
        y = tmp;
    }
    for (int i = 0; i < md->dim; i++)
        x[i] += y[i];
    if (md->flags & NORM_AFTER)
        norm_row(md, x, weight, bias, x);
}

/* Row m of the residual, then (next: norm after) x's row quantized for the next matmul. */
static void residual_then(const Model *md, float *x, const float *y, const float *weight,
                          const float *bias, float *tmp, Act *next, Py_ssize_t m) {
    int C = md->dim;
    residual_row(md, x + m * C, y + m * C, weight, bias, tmp + m * C);
    if (next)
        quantize_one(next, x, m);
}

/* x += norm(y) (post norms), x = norm(x + y) (norm after) or x += y; tmp: M x dim floats. With
 * norms after, `next` (or NULL) gets x quantized: the next matmul's input, in the same pass. */
static void residual(const Model *md, float *x, const float *y, const float *weight,
                     const float *bias, Py_ssize_t M, float *tmp, Act *next) {
    FOR_ROWS(md, M, residual_then(md, x, y, weight, bias, tmp, next, m));
}

static void normed_row(const Model *md, const float *x, const float *weight, const float *bias,
                       float *h, Act *a, Py_ssize_t m) {
    int C = md->dim;
    if (md->flags & (POST_NORMS | NORM_AFTER)) {
        quantize_one(a, x, m);
        return;
    }
    norm_row(md, x + m * C, weight, bias, h + m * C);
    quantize_one(a, h, m);
}

/* h = norm(x) (pre norms) or x, quantized for w. */
static void normed_input(const Model *md, const float *x, const float *weight, const float *bias,
                         Py_ssize_t M, float *h, Act *a) {
    FOR_ROWS(md, M, normed_row(md, x, weight, bias, h, a, m));
}

typedef struct {
    float *h, *qkv, *attn, *proj, *gate_up, *hidden, *tmp;
    Act in, mid; /* quantized inputs of width dim; of the heads' or the MLP's width */
} Work;

/* erf(x), Abramowitz and Stegun 7.1.26 (absolute error <= 1.5e-7) with exp_poly: elementwise
 * operations only, so the GELU loop vectorizes (libm's erff is a call an element). */
static inline float erf_poly(float x) {
    float a = fabsf(x), t = 1.0f / (1.0f + 0.3275911f * a);
    float p = 1.061405429f;
    p = p * t - 1.453152027f;
    p = p * t + 1.421413741f;
    p = p * t - 0.284496736f;
    p = p * t + 0.254829592f;
    float r = 1.0f - (p * t) * exp_poly(-(a * a));
    return x < 0.0f ? -r : r;
}

/* hidden row m = gelu(up row m) = up (1 + erf(up / sqrt 2)) / 2, quantized into a. */
WIDE static void gelu_row(const float *up, int F, float *hidden, Act *a, Py_ssize_t m) {
    const float *u = up + m * F;
    for (int j = 0; j < F; j++)
        hidden[m * F + j] = 0.5f * u[j] * (1.0f + erf_poly(u[j] * 0.70710678118654752f));
    quantize_one(a, hidden, m);
}

/* hidden row m = silu(gate) * up of gate_up row m (gate, then up: F each), quantized into a. */
WIDE static void swiglu_row(const float *gate_up, int F, float *hidden, Act *a, Py_ssize_t m) {
    const float *gate = gate_up + m * 2 * F, *up = gate + F;
    for (int j = 0; j < F; j++)
        hidden[m * F + j] = gate[j] / (1.0f + exp_poly(-gate[j])) * up[j];
    quantize_one(a, hidden, m);
}

/* x += cross_o(attention of cross_q(norm(x)) over the encoder's keys and values) (pre norms). */
static int cross_pass(const Batch *bt, int i, float *x, Work *wk) {
    const Model *md = bt->md;
    const Layer *ly = &md->layers[i];
    Py_ssize_t M = bt->B * bt->S;
    int HD = md->heads * md->head_dim;
    normed_input(md, x, ly->cross_norm, ly->cross_norm_b, M, wk->h, &wk->in);
    matmul(&ly->cross_q, &wk->in, M, wk->qkv, HD, ly->cross_bias[0], md->threads);
    if (attend(bt, i, wk->qkv, 1, wk->attn) < 0)
        return -1;
    Act heads = wk->mid;
    heads.cols = HD;
    FOR_ROWS(md, M, quantize_one(&heads, wk->attn, m));
    matmul(&ly->cross_o, &heads, M, wk->proj, md->dim, ly->cross_bias[1], md->threads);
    residual(md, x, wk->proj, NULL, NULL, M, wk->h, NULL);
    return 0;
}

static int layer_pass(const Batch *bt, int i, float *x, Work *wk) {
    const Model *md = bt->md;
    const Layer *ly = &md->layers[i];
    Py_ssize_t M = bt->B * bt->S;
    int HD = md->heads * md->head_dim, F = md->mlp_dim;
    int after = (md->flags & NORM_AFTER) != 0; /* a residual quantizes the next input */
    if (i == 0 || !after)
        normed_input(md, x, ly->attn_norm, ly->attn_norm_b, M, wk->h, &wk->in);
    matmul(&ly->qkv, &wk->in, M, wk->qkv, ly->qkv.rows, ly->bias[0], md->threads);
    place_keys(bt, ly, i, wk->qkv, wk->tmp);
    if (attend(bt, i, wk->qkv, 0, wk->attn) < 0)
        return -1;
    Act heads = wk->mid;
    heads.cols = HD;
    FOR_ROWS(md, M, quantize_one(&heads, wk->attn, m));
    matmul(&ly->o, &heads, M, wk->proj, md->dim, ly->bias[1], md->threads);
    residual(md, x, wk->proj, ly->attn_norm, ly->attn_norm_b, M, wk->h, after ? &wk->in : NULL);
    if ((md->flags & CROSS) && cross_pass(bt, i, x, wk) < 0)
        return -1;
    if (!after)
        normed_input(md, x, ly->mlp_norm, ly->mlp_norm_b, M, wk->h, &wk->in);
    matmul(&ly->gate_up, &wk->in, M, wk->gate_up, ly->gate_up.rows, ly->bias[2], md->threads);
    Act hidden = wk->mid;
    hidden.cols = F;
    if (md->flags & GELU)
        FOR_ROWS(md, M, gelu_row(wk->gate_up, F, wk->hidden, &hidden, m));
    else
        FOR_ROWS(md, M, swiglu_row(wk->gate_up, F, wk->hidden, &hidden, m));
    matmul(&ly->down, &hidden, M, wk->proj, md->dim, ly->bias[3], md->threads);
    Act *next = after && i + 1 < md->n_layers ? &wk->in : NULL;
    residual(md, x, wk->proj, ly->mlp_norm, ly->mlp_norm_b, M, wk->h, next);
    return 0;
}

static int work_alloc(Work *wk, const Model *md, Py_ssize_t M) {
    int C = md->dim, HD = md->heads * md->head_dim, F = md->mlp_dim;
    Py_ssize_t width = (Py_ssize_t)(md->heads + 2 * md->kv_heads) * md->head_dim;
    Py_ssize_t widest = HD > F ? HD : F;
    memset(wk, 0, sizeof *wk);
    wk->h = malloc((size_t)(M * C) * sizeof(float));
    wk->qkv = malloc((size_t)(M * width) * sizeof(float));
    wk->attn = malloc((size_t)(M * HD) * sizeof(float));
    wk->proj = malloc((size_t)(M * C) * sizeof(float));
    wk->gate_up = malloc((size_t)(M * 2 * F) * sizeof(float));
    wk->hidden = malloc((size_t)(M * F) * sizeof(float));
    wk->tmp = malloc((size_t)(C > HD ? C : HD) * sizeof(float)); /* a norm's output */
    int ok = wk->h && wk->qkv && wk->attn && wk->proj && wk->gate_up && wk->hidden && wk->tmp;
    ok = act_alloc(&wk->in, M, C, md->exact) && ok;
    return act_alloc(&wk->mid, M, widest, md->exact) && ok;
}

static void work_free(Work *wk) {
    free(wk->h);
    free(wk->qkv);
    free(wk->attn);
    free(wk->proj);
    free(wk->gate_up);
    free(wk->hidden);
    free(wk->tmp);
    act_free(&wk->in);
    act_free(&wk->mid);
}

/* The logits of the wanted positions (B x T of them; an encoder: none, x is the output). 0, or
 * -1 when out of memory. */
static int forward(const Batch *bt, float *x, const int64_t *wanted, Py_ssize_t T,
                   float *logits) {
    const Model *md = bt->md;
    Py_ssize_t M = bt->B * bt->S;
    int C = md->dim;
    Work wk;
    if (!work_alloc(&wk, md, M < bt->B * T ? bt->B * T : M)) {
        work_free(&wk);
        return -1;
    }
    for (int i = 0; i < md->n_layers; i++)
        if (layer_pass(bt, i, x, &wk) < 0) {
            work_free(&wk);
            return -1;
        }
    if (!logits) {
        work_free(&wk);
        return 0;
    }
    for (Py_ssize_t b = 0; b < bt->B; b++)
        for (Py_ssize_t t = 0; t < T; t++)
            norm_row(md, x + (b * bt->S + wanted[b * T + t]) * C, md->final_norm,
                     md->final_norm_b, wk.h + (b * T + t) * C);
    quantize(&wk.in, wk.h, bt->B * T);
    matmul(&md->head, &wk.in, bt->B * T, logits, md->head.rows, NULL, md->threads);
    work_free(&wk);
    return 0;
}

/* ---- Python ---- */

static const char *CAPSULE = "llm_compression.core._decode.Model";

static void mat_free(Mat *w) {
    if (w->f)
        PyBuffer_Release(&w->plain);
    w->f = NULL;
    free(w->q);
    free(w->scale);
    free(w->offset);
    w->q = NULL;
    w->scale = w->offset = NULL;
}

static void model_free(PyObject *capsule) {
    Model *md = PyCapsule_GetPointer(capsule, CAPSULE);
    if (!md)
        return;
    for (int i = 0; i < md->n_views; i++)
        PyBuffer_Release(&md->views[i]);
    for (int i = 0; md->layers && i < md->n_layers; i++) {
        mat_free(&md->layers[i].qkv);
        mat_free(&md->layers[i].o);
        mat_free(&md->layers[i].gate_up);
        mat_free(&md->layers[i].down);
        mat_free(&md->layers[i].cross_q);
        mat_free(&md->layers[i].cross_o);
    }
    mat_free(&md->head);
    free(md->views);
    free(md->layers);
    free(md);
}

/* A float32 buffer of at least `need` bytes, held by the model. NULL + ValueError. */
static const void *hold(Model *md, PyObject *obj, Py_ssize_t need, const char *what) {
    Py_buffer *view = &md->views[md->n_views];
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    md->n_views++;
    if (need < 0 || view->len < need) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, %zd needed", what, view->len, need);
        return NULL;
    }
    return view->buf;
}

/* The stored values (rows x cols; int8 as int8, int4 two a byte, low nibble first) into tiles. */
static void repack_values(Mat *w, const uint8_t *src) {
    Py_ssize_t groups = w->cols / GROUP, bb = block_bytes(w->kind);
    for (Py_ssize_t r = 0; r < w->rows; r++) {
        Py_ssize_t t = r / ROWS;
        int l = (int)(r % ROWS);
        for (Py_ssize_t g = 0; g < groups; g++) {
            uint8_t *block = w->q + (t * groups + g) * bb;
            for (int k = 0; k < GROUP; k++) {
                Py_ssize_t c = g * GROUP + k;
                int i = k / 4, b = k % 4;
                if (w->kind == 8) {
                    block[i * 64 + l * 4 + b] = src[r * w->cols + c] ^ 0x80; /* q + 128 */
                } else {
                    uint8_t byte = src[r * (w->cols / 2) + c / 2];
                    uint8_t v = c % 2 ? byte >> 4 : byte & 0x0F;
                    block[(i / 2) * 64 + l * 4 + b] |= (uint8_t)(i % 2 ? v << 4 : v);
                }
            }
        }
    }
}

/* rows x per values of `size` bytes into 16 a block (row l of a tile in lane l); per: the
 * groups a row, 1 for SCALES_ROW. */
static void *repack_lanes(const Mat *w, const uint8_t *src, Py_ssize_t per, int size) {
    uint8_t *out = calloc((size_t)(w->tiles * per * ROWS), (size_t)size);
    if (!out)
        return NULL;
    for (Py_ssize_t r = 0; r < w->rows; r++)
        for (Py_ssize_t g = 0; g < per; g++)
            memcpy(out + (((r / ROWS) * per + g) * ROWS + r % ROWS) * size,
                   src + (r * per + g) * size, (size_t)size);
    return out;
}

/* 0 with `v` viewed (need bytes), else -1 + ValueError naming `what`. */
static int exact_view(PyObject *obj, Py_buffer *v, Py_ssize_t need, const char *what) {
    if (PyObject_GetBuffer(obj, v, PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (v->len == need)
        return 0;
    PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, %zd expected", what, v->len, need);
    PyBuffer_Release(v);
    return -1;
}

/* Scales or offsets: float16 or float32 (the buffer's format); their count in *n. */
static int float_view(PyObject *obj, Py_buffer *v, int *half, Py_ssize_t *n, const char *what) {
    if (PyObject_GetBuffer(obj, v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    const char *f = v->format ? v->format : "B";
    f += *f == '<' || *f == '=' || *f == '@';
    *half = strcmp(f, "e") == 0;
    if (*half || strcmp(f, "f") == 0) {
        *n = v->len / (*half ? 2 : 4);
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "%s: scales and offsets are float16 or float32, not '%s'", what,
                 f);
    PyBuffer_Release(v);
    return -1;
}

/* The scales' layout from their count: one a group, or (float32, int8) one a row. */
static int scale_layout(Mat *w, int half, Py_ssize_t n, const char *what) {
    Py_ssize_t groups = w->rows * (w->cols / GROUP);
    if (n == groups) {
        w->scales = half ? SCALES_F16 : SCALES_F32;
        return 0;
    }
    if (n == w->rows && !half && w->kind == 8) {
        w->scales = SCALES_ROW;
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "%s: %zd scales, expected %zd (one a group of %d) or, float32 "
                 "for int8, %zd (one a row)", what, n, groups, GROUP, w->rows);
    return -1;
}

static int fill_mat(Mat *w, PyObject *q, PyObject *scale, PyObject *offset, const char *what) {
    Py_ssize_t per = w->cols / GROUP, n = 0, n_off = 0;
    Py_buffer qv = {0}, sv = {0}, ov = {0};
    int rc = -1, half = 0, half_off = 0;
    if (exact_view(q, &qv, w->kind == 8 ? w->rows * w->cols : w->rows * w->cols / 2, what) < 0 ||
        float_view(scale, &sv, &half, &n, what) < 0 || scale_layout(w, half, n, what) < 0)
        goto done;
    if (w->kind == 4 && float_view(offset, &ov, &half_off, &n_off, what) < 0)
        goto done;
    if (w->kind == 4 && (half_off != half || n_off != n)) {
        PyErr_Format(PyExc_ValueError, "%s: the offsets must match the scales (%zd of them, %s)",
                     what, n, half ? "float16" : "float32");
        goto done;
    }
    w->tiles = (w->rows + ROWS - 1) / ROWS;
    w->q = calloc((size_t)(w->tiles * per), (size_t)block_bytes(w->kind));
    per = w->scales == SCALES_ROW ? 1 : per;
    w->scale = w->q ? repack_lanes(w, sv.buf, per, half ? 2 : 4) : NULL;
    w->offset = w->kind == 4 && w->scale ? repack_lanes(w, ov.buf, per, half ? 2 : 4) : NULL;
    if (!w->scale || (w->kind == 4 && !w->offset)) {
        PyErr_NoMemory();
        goto done;
    }
    repack_values(w, qv.buf);
    rc = 0;
done:
    PyBuffer_Release(&qv); /* a no-op where nothing was viewed */
    PyBuffer_Release(&sv);
    PyBuffer_Release(&ov);
    return rc;
}

/* A float32 matrix: the caller's rows x cols floats, held as they are (released by mat_free). */
static int hold_plain(Mat *w, PyObject *values, const char *what) {
    Py_buffer v;
    int half = 0;
    Py_ssize_t n = 0;
    if (float_view(values, &v, &half, &n, what) < 0)
        return -1;
    if (half || n != w->rows * w->cols) {
        PyErr_Format(PyExc_ValueError, "%s: %zd %s values, expected %zd float32", what, n,
                     half ? "float16" : "float32", w->rows * w->cols);
        PyBuffer_Release(&v);
        return -1;
    }
    w->plain = v;
    w->f = v.buf;
    return 0;
}

/* (kind, rows, cols, q, scales, offsets) repacked into w (owned; mat_free); float32 held. */
static int parse_mat(PyObject *spec, Mat *w, Py_ssize_t rows, Py_ssize_t cols, const char *what) {
    PyObject *q, *scale, *offset;
    if (!PyArg_ParseTuple(spec, "innOOO", &w->kind, &w->rows, &w->cols, &q, &scale, &offset))
        return -1;
    int plain = w->kind == 32;
    if ((w->kind != 8 && w->kind != 4 && !plain) || w->cols % GROUP || w->cols <= 0 ||
        w->rows <= 0 || (rows && w->rows != rows) || w->cols != cols ||
        (w->kind == 4) == (offset == Py_None) || (plain && scale != Py_None) ||
        PRODUCT(w->rows + ROWS, w->cols, 4) < 0) {
        PyErr_Format(PyExc_ValueError,
                     "%s: kind %d, %zd x %zd does not fit (expected %zd x %zd, columns a "
                     "multiple of %d, offsets for int4 only, no scales for float32, sizes "
                     "within 2^63 bytes)",
                     what, w->kind, w->rows, w->cols, rows, cols, GROUP);
        return -1;
    }
    return plain ? hold_plain(w, q, what) : fill_mat(w, q, scale, offset, what);
}

/* A required float32 vector of n held by the model; None is refused (ValueError naming it). */
static const float *hold_norm(Model *md, PyObject *obj, Py_ssize_t n, const char *what) {
    if (obj == Py_None) {
        PyErr_Format(PyExc_ValueError, "%s is required, got None", what);
        return NULL;
    }
    return hold(md, obj, n * 4, what);
}

/* A float32 vector of n held by the model (None: NULL), or -1 + ValueError. */
static int hold_optional(Model *md, PyObject *obj, Py_ssize_t n, const char *what,
                         const float **out) {
    *out = obj == Py_None ? NULL : hold(md, obj, n * 4, what);
    return obj != Py_None && !*out ? -1 : 0;
}

/* A layer's six biases: LayerNorm's two (required with LAYER_NORM), the matrices' four. */
static int parse_biases(Model *md, PyObject *const *b, Layer *ly) {
    Py_ssize_t C = md->dim;
    if ((md->flags & LAYER_NORM) && (b[0] == Py_None || b[1] == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "LayerNorm needs the norms' biases");
        return -1;
    }
    return hold_optional(md, b[0], C, "attn_norm bias", &ly->attn_norm_b) < 0 ||
                   hold_optional(md, b[1], C, "mlp_norm bias", &ly->mlp_norm_b) < 0 ||
                   hold_optional(md, b[2], ly->qkv.rows, "qkv bias", &ly->bias[0]) < 0 ||
                   hold_optional(md, b[3], C, "o bias", &ly->bias[1]) < 0 ||
                   hold_optional(md, b[4], ly->gate_up.rows, "gate_up bias", &ly->bias[2]) < 0 ||
                   hold_optional(md, b[5], C, "down bias", &ly->bias[3]) < 0
               ? -1
               : 0;
}

/* CROSS: the cross-attention's query and output matrices, its norm and the biases. */
static int parse_cross(Model *md, PyObject *const *c, Layer *ly) {
    Py_ssize_t C = md->dim, HD = md->heads * md->head_dim;
    if (c[0] == Py_None || c[1] == Py_None) {
        PyErr_SetString(PyExc_ValueError, "a cross-attention layer needs cross_q and cross_o");
        return -1;
    }
    if (parse_mat(c[0], &ly->cross_q, HD, C, "cross_q") < 0 ||
        parse_mat(c[1], &ly->cross_o, C, HD, "cross_o") < 0 ||
        !(ly->cross_norm = hold_norm(md, c[2], C, "cross_norm")))
        return -1;
    if (md->flags & LAYER_NORM) {
        if (!(ly->cross_norm_b = hold_norm(md, c[3], C, "cross_norm_bias")))
            return -1;
    } else if (c[3] != Py_None) {
        PyErr_SetString(PyExc_ValueError, "cross_norm_bias: RMSNorm has no bias");
        return -1;
    }
    if (hold_optional(md, c[4], HD, "cross_q_bias", &ly->cross_bias[0]) < 0)
        return -1;
    return hold_optional(md, c[5], C, "cross_o_bias", &ly->cross_bias[1]);
}

static int parse_layer(Model *md, PyObject *spec, Layer *ly) {
    PyObject *m[4], *norms[4], *b[6] = {Py_None, Py_None, Py_None, Py_None, Py_None, Py_None};
    PyObject *c[6] = {Py_None, Py_None, Py_None, Py_None, Py_None, Py_None};
    if (!PyArg_ParseTuple(spec, "OOOOOOOO|OOOOOOOOOOOO", &m[0], &m[1], &m[2], &m[3], &norms[0],
                          &norms[1], &norms[2], &norms[3], &b[0], &b[1], &b[2], &b[3], &b[4],
                          &b[5], &c[0], &c[1], &c[2], &c[3], &c[4], &c[5]))
        return -1;
    if ((md->flags & CROSS) && parse_cross(md, c, ly) < 0)
        return -1;
    Py_ssize_t C = md->dim, HD = md->heads * md->head_dim, KVD = md->kv_heads * md->head_dim;
    Py_ssize_t up = (md->flags & GELU ? 1 : 2) * (Py_ssize_t)md->mlp_dim;
    if (parse_mat(m[0], &ly->qkv, HD + 2 * KVD, C, "qkv") < 0 ||
        parse_mat(m[1], &ly->o, C, HD, "o") < 0 ||
        parse_mat(m[2], &ly->gate_up, up, C, "gate_up") < 0 ||
        parse_mat(m[3], &ly->down, C, md->mlp_dim, "down") < 0)
        return -1;
    ly->attn_norm = hold_norm(md, norms[0], C, "attn_norm");
    ly->mlp_norm = ly->attn_norm ? hold_norm(md, norms[1], C, "mlp_norm") : NULL;
    if (!ly->attn_norm || !ly->mlp_norm || parse_biases(md, b, ly) < 0)
        return -1;
    int qk = (md->flags & QK_NORMS) != 0;
    ly->q_norm = qk ? hold_norm(md, norms[2], HD, "q_norm") : NULL;
    ly->k_norm = qk && ly->q_norm ? hold_norm(md, norms[3], KVD, "k_norm") : NULL;
    return qk && !(ly->q_norm && ly->k_norm) ? -1 : 0;
}

static int check_dims(const Model *md) {
    int ok = md->n_layers > 0 && md->n_layers <= MAX_LAYERS && md->dim > 0 && md->heads > 0 &&
             md->kv_heads > 0 && md->heads % md->kv_heads == 0 && md->head_dim > 0 &&
             md->head_dim % 2 == 0 && md->mlp_dim > 0 && md->max_pos > 0 && md->threads > 0 &&
             md->flags >= 0 && md->flags < 128 &&
             !((md->flags & POST_NORMS) && (md->flags & NORM_AFTER)) &&
             !((md->flags & CROSS) && (md->flags & (POST_NORMS | NORM_AFTER | ENCODER)));
    if (!ok)
        PyErr_SetString(PyExc_ValueError, "model dimensions or flags out of range");
    return ok ? 0 : -1;
}

/* One entry a layer from any iterable (a generator lets the caller's copy of each layer go as
 * soon as it is repacked: the peak while loading is the model once plus a layer). */
static int parse_layers(Model *md, PyObject *layers) {
    PyObject *it = PyObject_GetIter(layers), *item = NULL;
    int rc = it ? 0 : -1;
    for (int i = 0; rc == 0 && i < md->n_layers; i++) {
        item = PyIter_Next(it);
        rc = item ? parse_layer(md, item, &md->layers[i]) : -1;
        Py_XDECREF(item);
    }
    if (rc == 0 && (item = PyIter_Next(it)) != NULL) {
        Py_DECREF(item);
        rc = -1;
    }
    if (rc < 0 && !PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "layers: %d entries expected", md->n_layers);
    Py_XDECREF(it);
    return rc;
}

/* The final norm: a weight (RMSNorm), or a (weight, bias) pair (LayerNorm). */
static int parse_final_norm(Model *md, PyObject *obj) {
    int pair = PyTuple_Check(obj) && PyTuple_GET_SIZE(obj) == 2;
    if (pair != ((md->flags & LAYER_NORM) != 0)) {
        PyErr_SetString(PyExc_ValueError, "final_norm: a (weight, bias) pair for LayerNorm, a "
                        "weight for RMSNorm");
        return -1;
    }
    PyObject *weight = pair ? PyTuple_GET_ITEM(obj, 0) : obj;
    if (!(md->final_norm = hold_norm(md, weight, md->dim, "final_norm")))
        return -1;
    if (pair && !(md->final_norm_b = hold_norm(md, PyTuple_GET_ITEM(obj, 1), md->dim,
                                               "final_norm bias")))
        return -1;
    return 0;
}

/* Every matrix float32, or none (a float32 model's activations are not quantized). */
static int check_kinds(Model *md) {
    md->exact = md->layers[0].qkv.kind == 32;
    int mixed = !(md->flags & ENCODER) && (md->head.kind == 32) != md->exact;
    for (int i = 0; i < md->n_layers; i++) {
        const Layer *ly = &md->layers[i];
        const Mat *m[6] = {&ly->qkv, &ly->o, &ly->gate_up, &ly->down, &ly->cross_q,
                           &ly->cross_o};
        for (int j = 0; j < ((md->flags & CROSS) ? 6 : 4); j++)
            mixed |= (m[j]->kind == 32) != md->exact;
    }
    if (mixed)
        PyErr_SetString(PyExc_ValueError, "matrices: every one float32 (kind 32) or none");
    return mixed ? -1 : 0;
}

static int parse_model(Model *md, PyObject *args) {
    PyObject *cos, *sin, *final_norm, *head, *layers;
    if (!PyArg_ParseTuple(args, "(iiiiiii)fiiOOOOO", &md->n_layers, &md->dim, &md->heads,
                          &md->kv_heads, &md->head_dim, &md->mlp_dim, &md->max_pos, &md->eps,
                          &md->flags, &md->threads, &cos, &sin, &final_norm, &head, &layers))
        return -1;
    if (check_dims(md) < 0)
        return -1;
    int encoder = (md->flags & ENCODER) != 0;
    if (encoder != (head == Py_None) || encoder != (final_norm == Py_None) ||
        (cos == Py_None) != (sin == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "an encoder (flag 32) has no head and no final norm, "
                        "a decoder both; cos and sin come together");
        return -1;
    }
    md->views = calloc((size_t)md->n_layers * 14 + 8, sizeof(Py_buffer)); /* norms, biases */
    md->layers = calloc((size_t)md->n_layers, sizeof(Layer));
    if (!md->views || !md->layers) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t table = PRODUCT(md->max_pos, md->head_dim / 2); /* ints: cannot overflow */
    if (hold_optional(md, cos, table, "cos", &md->cos) < 0 ||
        hold_optional(md, sin, table, "sin", &md->sin) < 0)
        return -1;
    if (!encoder && (parse_final_norm(md, final_norm) < 0 ||
                     parse_mat(head, &md->head, 0, md->dim, "head") < 0))
        return -1;
    return parse_layers(md, layers) < 0 ? -1 : check_kinds(md);
}

static PyObject *py_create(PyObject *self, PyObject *args) {
    Model *md = calloc(1, sizeof(Model));
    if (!md)
        return PyErr_NoMemory();
    PyObject *capsule = PyCapsule_New(md, CAPSULE, model_free);
    if (!capsule) {
        free(md);
        return NULL;
    }
    if (parse_model(md, args) < 0) {
        Py_DECREF(capsule); /* releases what was held */
        return NULL;
    }
    return capsule;
}

typedef struct {
    Py_buffer embeds, past, wanted, logits, caches[2 * MAX_LAYERS], cross[2 * MAX_LAYERS];
    int n_caches, n_cross;
} StepViews;

static void release_step(StepViews *sv) {
    PyBuffer_Release(&sv->embeds);
    PyBuffer_Release(&sv->past);
    PyBuffer_Release(&sv->wanted);
    PyBuffer_Release(&sv->logits);
    for (int i = 0; i < sv->n_caches; i++)
        PyBuffer_Release(&sv->caches[i]);
    for (int i = 0; i < sv->n_cross; i++)
        PyBuffer_Release(&sv->cross[i]);
}

static int view(PyObject *obj, Py_buffer *v, Py_ssize_t need, int writable, const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, v, flags) < 0)
        return -1;
    if (v->len != need) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, %zd expected", what, v->len, need);
        return -1;
    }
    return 0;
}

static int check_batch(const Batch *bt, const int32_t *past, const int64_t *wanted,
                       Py_ssize_t T) {
    for (Py_ssize_t b = 0; b < bt->B; b++)
        if (past[b] < 0 || past[b] + bt->S > bt->capacity || past[b] + bt->S > bt->md->max_pos) {
            PyErr_Format(PyExc_ValueError, "row %zd: positions %d + %zd exceed the cache (%zd) "
                         "or the model's positions", b, past[b], bt->S, bt->capacity);
            return -1;
        }
    for (Py_ssize_t i = 0; i < bt->B * T; i++)
        if (wanted[i] < 0 || wanted[i] >= bt->S) {
            PyErr_SetString(PyExc_ValueError, "a wanted position is outside 0 .. S - 1");
            return -1;
        }
    return 0;
}

/* Bytes of a pass's widest work buffers for B x S rows (-1: they overflow; work_alloc relies
 * on this check). */
static Py_ssize_t work_bytes(const Model *md, Py_ssize_t B, Py_ssize_t S) {
    Py_ssize_t width = 2 * (Py_ssize_t)md->mlp_dim +
                       ((Py_ssize_t)md->heads + 2 * md->kv_heads) * md->head_dim;
    return PRODUCT(B, S, width, 4);
}

static int step_views(const Model *md, PyObject *const *a, Batch *bt, Py_ssize_t T,
                      StepViews *sv) {
    Py_ssize_t B = bt->B, S = bt->S, C = md->dim, L = bt->capacity;
    Py_ssize_t cache = PRODUCT(B, md->kv_heads, L, md->head_dim, 4);
    Py_ssize_t embeds = PRODUCT(B, S, C, 4), logits = PRODUCT(B, T, md->head.rows, 4);
    if (cache < 0 || embeds < 0 || logits < 0 || work_bytes(md, B, S) < 0) {
        PyErr_SetString(PyExc_ValueError, "batch, positions or cache sizes overflow");
        return -1;
    }
    if (view(a[1], &sv->embeds, embeds, 1, "embeds") < 0 ||
        view(a[4], &sv->past, B * 4, 0, "past") < 0 ||
        view(a[7], &sv->wanted, B * T * 8, 0, "wanted") < 0 ||
        view(a[9], &sv->logits, logits, 1, "logits") < 0)
        return -1;
    if (!PyList_Check(a[5]) || PyList_GET_SIZE(a[5]) != 2 * md->n_layers) {
        PyErr_SetString(PyExc_ValueError, "caches: a list of 2 buffers a layer expected");
        return -1;
    }
    for (int i = 0; i < 2 * md->n_layers; i++, sv->n_caches++)
        if (view(PyList_GET_ITEM(a[5], i), &sv->caches[i], cache, 1, "a cache") < 0)
            return -1;
    return 0;
}

/* The model in args[0] of a call that takes `want` arguments; NULL with TypeError (`usage`)
 * or the capsule's error. */
/* The encoder's keys and values of every layer (args 10, 11: a list, the memory's length), for
 * all rows at once (one row's, shared) or a row each. */
static int cross_views(const Model *md, PyObject *const *a, Batch *bt, StepViews *sv) {
    bt->memory = PyLong_AsSsize_t(a[11]);
    if (PyErr_Occurred())
        return -1;
    Py_ssize_t one = PRODUCT(md->heads, bt->memory, md->head_dim, 4);
    if (bt->memory < 1 || bt->memory > (1 << 24) || one < 0 || !PyList_Check(a[10]) ||
        PyList_GET_SIZE(a[10]) != 2 * md->n_layers) {
        PyErr_SetString(PyExc_ValueError, "cross: a list of 2 buffers a layer and a memory "
                        "length in 1 .. 2^24 expected");
        return -1;
    }
    for (int i = 0; i < 2 * md->n_layers; i++, sv->n_cross++) {
        Py_buffer *v = &sv->cross[i];
        if (PyObject_GetBuffer(PyList_GET_ITEM(a[10], i), v, PyBUF_C_CONTIGUOUS) < 0)
            return -1;
        Py_ssize_t rows = v->len == one ? 1 : v->len == one * bt->B ? bt->B : 0;
        if (!rows || (i && rows != bt->cross_rows)) {
            sv->n_cross++; /* released with the others */
            PyErr_Format(PyExc_ValueError, "cross buffer %d holds %zd bytes: expected %zd (one "
                         "row for all) or %zd (a row each), every layer alike", i, v->len, one,
                         one * bt->B);
            return -1;
        }
        bt->cross_rows = rows;
    }
    return 0;
}

static Model *model_arg(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want,
                        const char *usage) {
    if (nargs != want) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    return PyCapsule_GetPointer(args[0], CAPSULE);
}

static PyObject *py_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Model *md = nargs >= 1 ? model_arg(args, nargs, nargs, "") : NULL;
    if (md && nargs != ((md->flags & CROSS) ? 12 : 10))
        md = NULL;
    if (!md) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "step takes 10 arguments (12 with cross-attention: "
                            "the encoder's keys and values and its length)");
        return NULL;
    }
    if (md->flags & ENCODER) {
        PyErr_SetString(PyExc_ValueError, "an encoder has no step: call encode");
        return NULL;
    }
    Batch bt = {md, PyLong_AsSsize_t(args[2]), PyLong_AsSsize_t(args[3]),
                PyLong_AsSsize_t(args[6]), NULL, NULL, NULL};
    Py_ssize_t T = PyLong_AsSsize_t(args[8]);
    if (PyErr_Occurred())
        return NULL;
    if (bt.B < 1 || bt.S < 1 || bt.capacity < 1 || T < 1 || bt.B > (1 << 20) ||
        bt.S > md->max_pos || T > bt.S) {
        PyErr_SetString(PyExc_ValueError, "batch sizes out of range");
        return NULL;
    }
    StepViews *sv = calloc(1, sizeof(StepViews));
    float **caches = malloc(sizeof(float *) * 4 * (size_t)md->n_layers);
    int rc = -1;
    if (!sv || !caches) {
        PyErr_NoMemory();
    } else if (step_views(md, args, &bt, T, sv) == 0 &&
               (!(md->flags & CROSS) || cross_views(md, args, &bt, sv) == 0)) {
        for (int i = 0; i < 2 * md->n_layers; i++) {
            caches[i] = sv->caches[i].buf;
            caches[2 * md->n_layers + i] = sv->n_cross ? sv->cross[i].buf : NULL;
        }
        bt.past = sv->past.buf;
        bt.caches = caches;
        bt.cross = caches + 2 * md->n_layers;
        if (check_batch(&bt, bt.past, sv->wanted.buf, T) == 0) {
            Py_BEGIN_ALLOW_THREADS rc = forward(&bt, sv->embeds.buf, sv->wanted.buf, T,
                                                sv->logits.buf);
            Py_END_ALLOW_THREADS if (rc < 0) PyErr_NoMemory();
        }
    }
    if (sv)
        release_step(sv);
    free(sv);
    free(caches);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* An encoder's whole pass: x (B x S x dim) replaced by the last layer's output; row b's queries
 * attend to its first lengths[b] positions (right padding: the rest are padding). */
static PyObject *py_encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Model *md = model_arg(args, nargs, 5, "encode(model, x, B, S, lengths)");
    if (!md)
        return NULL;
    Py_ssize_t B = PyLong_AsSsize_t(args[2]), S = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred())
        return NULL;
    if (!(md->flags & ENCODER) || B < 1 || S < 1 || B > (1 << 20) || S > md->max_pos) {
        PyErr_SetString(PyExc_ValueError,
                        "encode: an encoder, 1 <= B <= 2^20, 1 <= S <= positions");
        return NULL;
    }
    Py_ssize_t xs = PRODUCT(B, S, md->dim, 4), cache = PRODUCT(B, md->kv_heads, S, md->head_dim, 4);
    Py_buffer xv = {0}, lv = {0};
    float *keys = NULL, *values = NULL, **caches = NULL;
    int32_t *past = NULL;
    int rc = -1;
    if (xs < 0 || cache < 0 || work_bytes(md, B, S) < 0) {
        PyErr_SetString(PyExc_ValueError, "encode: batch sizes overflow");
        goto done;
    }
    if (view(args[1], &xv, xs, 1, "x") < 0 || view(args[4], &lv, B * 4, 0, "lengths") < 0)
        goto done;
    const int32_t *lengths = lv.buf;
    for (Py_ssize_t b = 0; b < B; b++)
        if (lengths[b] < 1 || lengths[b] > S) {
            PyErr_Format(PyExc_ValueError, "row %zd: length %d outside 1 .. %zd", b, lengths[b], S);
            goto done;
        }
    keys = malloc((size_t)cache);
    values = malloc((size_t)cache);
    past = calloc((size_t)B, sizeof(int32_t));
    caches = malloc(sizeof(float *) * 2 * (size_t)md->n_layers);
    if (!keys || !values || !past || !caches) {
        PyErr_NoMemory();
        goto done;
    }
    for (int i = 0; i < md->n_layers; i++) { /* one layer's keys and values at a time */
        caches[2 * i] = keys;
        caches[2 * i + 1] = values;
    }
    Batch bt = {md, B, S, S, past, caches, lengths};
    Py_BEGIN_ALLOW_THREADS rc = forward(&bt, xv.buf, NULL, 0, NULL);
    Py_END_ALLOW_THREADS if (rc < 0) PyErr_NoMemory();
done:
    free(keys);
    free(values);
    free(past);
    free(caches);
    PyBuffer_Release(&xv);
    PyBuffer_Release(&lv);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_matmul(PyObject *self, PyObject *args) {
    PyObject *spec, *x, *out;
    Py_ssize_t M;
    int threads = 1;
    if (!PyArg_ParseTuple(args, "OOnO|i", &spec, &x, &M, &out, &threads))
        return NULL;
    Py_buffer xv = {0}, ov = {0};
    Mat w = {0};
    PyObject *result = NULL;
    Act a = {0};
    if (M < 1 || !PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 6) {
        PyErr_SetString(PyExc_ValueError, "matmul(matrix, x, M >= 1, out)");
        goto done;
    }
    Py_ssize_t cols = PyLong_AsSsize_t(PyTuple_GET_ITEM(spec, 2));
    if (PyErr_Occurred() || parse_mat(spec, &w, 0, cols, "matrix") < 0 ||
        view(x, &xv, M * w.cols * 4, 0, "x") < 0 || view(out, &ov, M * w.rows * 4, 1, "out") < 0)
        goto done;
    if (!act_alloc(&a, M, w.cols, w.kind == 32)) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS quantize(&a, xv.buf, M);
    matmul(&w, &a, M, ov.buf, w.rows, NULL, threads > 1 ? threads : 1);
    Py_END_ALLOW_THREADS result = Py_None;
    Py_INCREF(result);
done:
    act_free(&a);
    mat_free(&w);
    PyBuffer_Release(&xv);
    PyBuffer_Release(&ov);
    return result;
}

/* Row r of w, dequantized as GroupQuantized.dequantize does (d * q, then + m: two roundings). */
static void dequantize_row(const Mat *w, Py_ssize_t r, float *o) {
    if (w->kind == 32) {
        memcpy(o, w->f + r * w->cols, (size_t)w->cols * sizeof(float));
        return;
    }
    Py_ssize_t groups = w->cols / GROUP, t = r / ROWS;
    int l = (int)(r % ROWS);
    for (Py_ssize_t g = 0; g < groups; g++) {
        const uint8_t *block = w->q + (t * groups + g) * block_bytes(w->kind);
        Py_ssize_t at = (t * groups + g) * ROWS + l;
        float d = scale_of(w, t, g, l);
        for (int k = 0; k < GROUP; k++) {
            int v = block_value(w->kind, block, l, k);
            if (w->kind == 8)
                o[g * GROUP + k] = (float)(v - 128) * d;
            else
                o[g * GROUP + k] = (float)v * d + mat_value(w->offset, w->scales == SCALES_F16, at);
        }
    }
}

/* Rows `ids` of the head: the tied token table's lookups, from the decoder's one copy. */
static PyObject *py_lookup(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Model *md = model_arg(args, nargs, 3, "lookup(model, ids, out)");
    Py_buffer ids = {0}, out = {0};
    PyObject *result = NULL;
    if (!md || PyObject_GetBuffer(args[1], &ids, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    const Mat *w = &md->head;
    Py_ssize_t n = ids.len / 8;
    if (view(args[2], &out, n * w->cols * 4, 1, "out") < 0)
        goto done;
    const int64_t *rows = ids.buf;
    for (Py_ssize_t i = 0; i < n; i++)
        if (rows[i] < 0 || rows[i] >= w->rows) {
            PyErr_Format(PyExc_ValueError, "token id %lld is outside 0 .. %zd", (long long)rows[i],
                         w->rows - 1);
            goto done;
        }
    for (Py_ssize_t i = 0; i < n; i++)
        dequantize_row(w, rows[i], (float *)out.buf + i * w->cols);
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&ids);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *py_kernel(PyObject *self, PyObject *unused) {
    return PyUnicode_FromString(use_simd ? "avx512" : "portable");
}

static PyObject *py_set_kernel(PyObject *self, PyObject *arg) {
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name)
        return NULL;
    if (strcmp(name, "portable") == 0)
        use_simd = 0;
    else if (strcmp(name, "avx512") == 0 && simd_available())
        use_simd = 1;
    else {
        PyErr_Format(PyExc_ValueError, "kernel %R is not available here", arg);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"create", py_create, METH_VARARGS, "create(...) -> model (see the file's comment)"},
    {"step", (PyCFunction)(void (*)(void))py_step, METH_FASTCALL, "one decoder pass (see the top)"},
    {"encode", (PyCFunction)(void (*)(void))py_encode, METH_FASTCALL, "an encoder's pass"},
    {"matmul", py_matmul, METH_VARARGS, "matmul(matrix, x, M, out)"},
    {"lookup", (PyCFunction)(void (*)(void))py_lookup, METH_FASTCALL, "lookup(model, ids, out)"},
    {"kernel", py_kernel, METH_NOARGS, "the dot-product kernel in use"},
    {"set_kernel", py_set_kernel, METH_O, "set_kernel('avx512' | 'portable')"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_decode", NULL, -1, methods};

PyMODINIT_FUNC PyInit__decode(void) {
    use_simd = simd_available();
    return PyModule_Create(&module);
}
