/* One decoder pass of a group-quantized causal LM on the CPU (core.native_decoder; decision 0015).
 *
 * Why C: a decode step streams every weight once; ONNX Runtime's MatMulNBits reads int8 rows at
 * 13.5-16 GB/s here while the memory delivers ~27 GB/s (decision 0011), and a custom ORT operator
 * needs ORT's C API header, which no installed package ships. This file is the whole step:
 * RMSNorm, the matmuls, rotary positions, attention over the caller's KV cache, SwiGLU, the head.
 *
 * Weights (docs/format.md, "Group-wise layouts"), rows x cols, cols a multiple of 64:
 *   int8: q stored as q + 128 (uint8), one float32 scale a group of 32:  w = d * q
 *   int4: q 0..15 two a byte (element 2j low nibble of byte j), float32 scale and offset a group:
 *         w = d * q + m
 * Activations are quantized to int8 a group of 32 (scale max|x| / 127, round to nearest even),
 * so each group's products are exact int32 sums (AVX512-VNNI vpdpbusd: unsigned weight byte
 * times signed activation byte). Per group g: int8: d_g dx_g (sum q x - 128 sum x);
 * int4: d_g dx_g sum q x + m_g dx_g sum x.
 *
 * Two kernels, one arithmetic: the AVX512 one (runtime dispatch) and a portable one that does
 * the same float operations in the same order per 16 lanes (tests compare them bit for bit).
 * Lane l of a 64-element pair of groups holds the products of elements 4l .. 4l + 3 of the
 * kernel's byte order: int8 natural order (lane l -> group l / 8); int4 the low nibbles of the
 * pair's 32 bytes, then the high nibbles (lane l -> group (l / 4) % 2). The activation is
 * stored in the same order, so both read it straight.
 *
 * Python API (buffers through the buffer protocol; sizes checked, ValueError otherwise):
 *   create(dims, eps, flags, threads, cos, sin, final_norm, head, layers) -> capsule
 *       dims: (n_layers, dim, n_heads, n_kv_heads, head_dim, mlp_dim, max_positions)
 *       flags: 1 = post norms (OLMo-2: x + norm(f(x))), 2 = q / k norms over the projections
 *       head / matrices: (kind 8 or 4, rows, cols, q, scales, offsets or None)
 *       layers: per layer (qkv, o, gate_up, down, attn_norm, mlp_norm, q_norm|None, k_norm|None)
 *   step(model, embeds, B, S, past, caches, capacity, wanted, T, logits)
 *       embeds B*S*dim float32; past B int32; caches 2*n_layers buffers of B*KV*capacity*D
 *       float32 (keys, values per layer, written at past[b] .. past[b] + S - 1); wanted B*T
 *       int64 positions in 0..S-1; logits B*T*vocab float32 (written)
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
#endif

#define GROUP 32
#define PAIR 64 /* elements a kernel iteration: two groups */
#define LANES 16
#define TILE 4 /* weight rows sharing each activation load */
#define MAX_LAYERS 4096
#ifndef DISTANCE
#define DISTANCE 4096 /* bytes of weights prefetched ahead */
#endif

typedef struct {
    int kind; /* 8 or 4 */
    Py_ssize_t rows, cols;
    const uint8_t *q;
    const float *scale, *offset; /* rows x cols / 32; offset NULL for int8 */
} Mat;

typedef struct {
    Mat qkv, o, gate_up, down;
    const float *attn_norm, *mlp_norm, *q_norm, *k_norm;
} Layer;

typedef struct {
    int n_layers, dim, heads, kv_heads, head_dim, mlp_dim, max_pos, post_norm, qk_norm, threads;
    float eps;
    const float *cos, *sin, *final_norm;
    Mat head;
    Layer *layers;
    Py_buffer *views; /* every buffer held, released with the capsule */
    int n_views;
} Model;

/* An activation (M rows of cols) quantized for one weight kind's byte order. */
typedef struct {
    int kind;
    Py_ssize_t cols;
    int8_t *q;     /* M x cols */
    float *dx;     /* M x pairs x 16: the lane's group scale */
    int32_t *init; /* int8: -128 * sum q of the group in its first lane, else 0 */
    float *sx;     /* int4: dx * sum q of the group in its first lane, else 0 */
} Act;

static int use_simd = 0;

static int lane_group(int kind, int lane) { return kind == 8 ? lane / 8 : (lane / 4) % 2; }

#define ROUNDING 12582912.0f /* 1.5 * 2^23 */

/* ---- activations ---- */

static void quantize_row(int kind, const float *x, Py_ssize_t cols, int8_t *q, float *dx,
                         int32_t *init, float *sx) {
    for (Py_ssize_t p = 0; p < cols / PAIR; p++) {
        float scale[2];
        int sum[2];
        for (int g = 0; g < 2; g++) {
            const float *v = x + p * PAIR + g * GROUP;
            uint32_t bits = 0; /* max |v| as the largest bit pattern without the sign (vectorizes) */
            for (int k = 0; k < GROUP; k++) {
                uint32_t b;
                memcpy(&b, v + k, sizeof b);
                b &= 0x7fffffffu;
                bits = b > bits ? b : bits;
            }
            float top;
            memcpy(&top, &bits, sizeof top);
            scale[g] = top / 127.0f;
            float inv = top > 0.0f ? 127.0f / top : 0.0f;
            sum[g] = 0;
            int8_t *out = q + p * PAIR;
            for (int k = 0; k < GROUP; k++) {
                /* |v| <= 127 (+ rounding): adding and subtracting 1.5 * 2^23 rounds to the
                 * nearest integer, ties to even (lrintf's rounding, without the call) */
                float r = (v[k] * inv + ROUNDING) - ROUNDING;
                r = r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r;
                out[kind == 8 ? g * GROUP + k : (k % 2) * 32 + g * 16 + k / 2] = (int8_t)r;
                sum[g] += (int)r;
            }
        }
        for (int l = 0; l < LANES; l++) {
            int g = lane_group(kind, l), first = kind == 8 ? l % 8 == 0 : l % 4 == 0 && l < 8;
            dx[p * LANES + l] = scale[g];
            init[p * LANES + l] = kind == 8 && first ? -128 * sum[g] : 0;
            sx[p * LANES + l] = kind == 4 && first ? scale[g] * (float)sum[g] : 0.0f;
        }
    }
}

static int act_alloc(Act *a, int kind, Py_ssize_t M, Py_ssize_t cols) {
    Py_ssize_t lanes = M * (cols / PAIR) * LANES;
    a->kind = kind;
    a->cols = cols;
    a->q = malloc((size_t)(M * cols));
    a->dx = malloc((size_t)lanes * sizeof(float));
    a->init = malloc((size_t)lanes * sizeof(int32_t));
    a->sx = malloc((size_t)lanes * sizeof(float));
    return a->q && a->dx && a->init && a->sx;
}

static void act_free(Act *a) {
    free(a->q);
    free(a->dx);
    free(a->init);
    free(a->sx);
}

static void quantize_one(Act *a, const float *x, Py_ssize_t m) {
    Py_ssize_t stride = (a->cols / PAIR) * LANES;
    quantize_row(a->kind, x + m * a->cols, a->cols, a->q + m * a->cols, a->dx + m * stride,
                 a->init + m * stride, a->sx + m * stride);
}

static void quantize(Act *a, const float *x, Py_ssize_t M) {
    for (Py_ssize_t m = 0; m < M; m++)
        quantize_one(a, x, m);
}

/* BODY for each row m of a batch (M rows, independent): split over the threads from 2 rows; one
 * row runs without entering OpenMP (a decode step's 120 row loops would each pay its call). */
#define FOR_ROWS(md, M, BODY)                                                                      \
    do {                                                                                           \
        if ((M) > 1 && (md)->threads > 1) {                                                        \
            _Pragma("omp parallel for schedule(static) num_threads((md)->threads)")               \
            for (Py_ssize_t m = 0; m < (M); m++)                                                   \
                BODY;                                                                              \
        } else {                                                                                   \
            for (Py_ssize_t m = 0; m < (M); m++)                                                   \
                BODY;                                                                              \
        }                                                                                          \
    } while (0)

/* ---- the dot products: out[i] = row r0 + i of w times activation row m, i < n (<= TILE) ---- */

/* The fixed order both kernels sum 16 lanes in (the AVX512 one's shuffles). */
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
    float part[LANES] = {0}, tail = 0.0f;
    int d = 0;
    for (; d + LANES <= n; d += LANES)
        for (int l = 0; l < LANES; l++)
            part[l] += a[d + l] * b[d + l];
    for (; d < n; d++)
        tail += a[d] * b[d];
    return reduce16(part) + tail;
}

static uint8_t weight_byte(const Mat *w, const uint8_t *row, Py_ssize_t p, int j) {
    if (w->kind == 8)
        return row[p * PAIR + j];
    uint8_t b = row[p * 32 + j % 32];
    return j < 32 ? b & 0x0F : b >> 4;
}

static void dots_portable(const Mat *w, Py_ssize_t r0, int n, const Act *a, Py_ssize_t m,
                          float *out) {
    Py_ssize_t pairs = w->cols / PAIR, stride = pairs * LANES, groups = w->cols / GROUP;
    Py_ssize_t row_bytes = w->kind == 8 ? w->cols : w->cols / 2;
    const int8_t *x = a->q + m * a->cols;
    for (int i = 0; i < n; i++) {
        Py_ssize_t r = r0 + i;
        const uint8_t *row = w->q + r * row_bytes;
        float f[LANES] = {0};
        for (Py_ssize_t p = 0; p < pairs; p++) {
            const float *dx = a->dx + m * stride + p * LANES;
            for (int l = 0; l < LANES; l++) {
                int32_t acc = a->init[m * stride + p * LANES + l];
                for (int j = 4 * l; j < 4 * l + 4; j++)
                    acc += (int32_t)weight_byte(w, row, p, j) * (int32_t)x[p * PAIR + j];
                float s = w->scale[r * groups + 2 * p + lane_group(w->kind, l)] * dx[l];
                f[l] = fmaf((float)acc, s, f[l]);
            }
            if (w->kind == 4)
                for (int l = 0; l < LANES; l++) {
                    float o = w->offset[r * groups + 2 * p + lane_group(4, l)];
                    f[l] = fmaf(o, a->sx[m * stride + p * LANES + l], f[l]);
                }
        }
        out[i] = reduce16(f);
    }
}

#ifdef HAVE_X86
#define SIMD_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,fma")))

SIMD_TARGET static inline float reduce16_avx512(__m512 f) {
    __m256 t8 = _mm256_add_ps(_mm512_castps512_ps256(f), _mm512_extractf32x8_ps(f, 1));
    __m128 t4 = _mm_add_ps(_mm256_castps256_ps128(t8), _mm256_extractf128_ps(t8, 1));
    __m128 t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4)); /* t4[0] + t4[2], t4[1] + t4[3] */
    return _mm_cvtss_f32(_mm_add_ss(t2, _mm_shuffle_ps(t2, t2, 1)));
}

/* Two consecutive floats spread over the lanes of their groups. */
SIMD_TARGET static inline __m512 pair_lanes(const float *v, __m512i index) {
    __m128 two = _mm_castpd_ps(_mm_load_sd((const double *)v));
    return _mm512_permutexvar_ps(index, _mm512_castps128_ps512(two));
}

/* n weight rows (from r0) times mc activation rows (from m0): out[j * ld + i]. Inlined into a
 * copy per (kind, n, mc), so that the accumulators stay in registers and nothing branches on
 * the kind inside the loop; each weight vector is loaded, unpacked and its scales spread once
 * for all mc activation rows. Per (row, activation) the float operations are dots_portable's. */
SIMD_TARGET static inline __attribute__((always_inline)) void
block_avx512(const Mat *w, Py_ssize_t r0, const int n, const int kind, const Act *a,
             Py_ssize_t m0, const int mc, float *out, Py_ssize_t ld) {
    Py_ssize_t pairs = w->cols / PAIR, stride = pairs * LANES, groups = w->cols / GROUP;
    Py_ssize_t row_bytes = kind == 8 ? w->cols : w->cols / 2, step = kind == 8 ? PAIR : 32;
    __m512i index = kind == 8 ? _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)
                              : _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0);
    const uint8_t *q = w->q + r0 * row_bytes;
    const float *scale = w->scale + r0 * groups, *offset = kind == 4 ? w->offset + r0 * groups : 0;
    __m512 f[TILE][TILE];
    for (int i = 0; i < n; i++)
        for (int j = 0; j < mc; j++)
            f[i][j] = _mm512_setzero_ps();
    for (Py_ssize_t p = 0; p < pairs; p++) {
        __m512i wv[TILE];
        __m512 sv[TILE], ov[TILE];
        /* rows lie one after the other: what is DISTANCE bytes ahead is read soon (the hardware
         * prefetcher does not follow n interleaved rows of a few lines each) */
        _mm_prefetch((const char *)(scale + 2 * p) + DISTANCE / 4, _MM_HINT_T0);
        if (kind == 4)
            _mm_prefetch((const char *)(offset + 2 * p) + DISTANCE / 4, _MM_HINT_T0);
        for (int i = 0; i < n; i++) {
            const uint8_t *wp = q + i * row_bytes + p * step;
            _mm_prefetch((const char *)wp + DISTANCE, _MM_HINT_T0);
            if (kind == 8) {
                wv[i] = _mm512_loadu_si512(wp);
            } else {
                __m256i b = _mm256_loadu_si256((const __m256i *)wp);
                __m256i low = _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
                __m256i high = _mm256_and_si256(_mm256_srli_epi16(b, 4), _mm256_set1_epi8(0x0F));
                wv[i] = _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
                ov[i] = pair_lanes(offset + i * groups + 2 * p, index);
            }
            sv[i] = pair_lanes(scale + i * groups + 2 * p, index);
        }
        for (int j = 0; j < mc; j++) {
            Py_ssize_t m = m0 + j, at = m * stride + p * LANES;
            __m512i xv = _mm512_loadu_si512(a->q + m * a->cols + p * PAIR);
            __m512i start = kind == 8 ? _mm512_loadu_si512(a->init + at) : _mm512_setzero_si512();
            __m512 dx = _mm512_loadu_ps(a->dx + at);
            __m512 sx = kind == 4 ? _mm512_loadu_ps(a->sx + at) : _mm512_setzero_ps();
            for (int i = 0; i < n; i++) {
                __m512i acc = _mm512_dpbusd_epi32(start, wv[i], xv);
                __m512 s = _mm512_mul_ps(sv[i], dx);
                f[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), s, f[i][j]);
                if (kind == 4)
                    f[i][j] = _mm512_fmadd_ps(ov[i], sx, f[i][j]);
            }
        }
    }
    for (int j = 0; j < mc; j++)
        for (int i = 0; i < n; i++)
            out[j * ld + i] = reduce16_avx512(f[i][j]);
}

#define BLOCK_CASES(KIND)                                                                          \
    switch (mc) {                                                                                  \
    case 1: block_avx512(w, r0, TILE, KIND, a, m0, 1, out, ld); break;                            \
    case 2: block_avx512(w, r0, TILE, KIND, a, m0, 2, out, ld); break;                            \
    case 3: block_avx512(w, r0, TILE, KIND, a, m0, 3, out, ld); break;                            \
    default: block_avx512(w, r0, TILE, KIND, a, m0, 4, out, ld); break;                           \
    }

SIMD_TARGET static void dots_avx512(const Mat *w, Py_ssize_t r0, int n, const Act *a,
                                    Py_ssize_t m0, int mc, float *out, Py_ssize_t ld) {
    if (n == TILE && w->kind == 8) {
        BLOCK_CASES(8)
    } else if (n == TILE) {
        BLOCK_CASES(4)
    } else { /* the last rows of a matrix */
        for (int j = 0; j < mc; j++)
            for (int i = 0; i < n; i++)
                if (w->kind == 8)
                    block_avx512(w, r0 + i, 1, 8, a, m0 + j, 1, out + j * ld + i, ld);
                else
                    block_avx512(w, r0 + i, 1, 4, a, m0 + j, 1, out + j * ld + i, ld);
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

/* Rows r0 .. r0 + n - 1 (n <= TILE) times activations m0 .. m0 + mc - 1 (mc <= TILE):
 * out[j * ld + i]. */
static void dots(const Mat *w, Py_ssize_t r0, int n, const Act *a, Py_ssize_t m0, int mc,
                 float *out, Py_ssize_t ld) {
#ifdef HAVE_X86
    if (use_simd) {
        dots_avx512(w, r0, n, a, m0, mc, out, ld);
        return;
    }
#endif
    for (int j = 0; j < mc; j++) {
        float part[TILE];
        dots_portable(w, r0, n, a, m0 + j, part);
        memcpy(out + j * ld, part, (size_t)n * sizeof(float));
    }
}

/* out (M x w->rows, row stride ld) = quantized activation a (M rows) times w^T. */
static void matmul(const Mat *w, const Act *a, Py_ssize_t M, float *out, Py_ssize_t ld,
                   int threads) {
    Py_ssize_t tiles = (w->rows + TILE - 1) / TILE;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (Py_ssize_t t = 0; t < tiles; t++) {
        Py_ssize_t r0 = t * TILE;
        int n = (int)(w->rows - r0 < TILE ? w->rows - r0 : TILE);
        for (Py_ssize_t m0 = 0; m0 < M; m0 += TILE)
            dots(w, r0, n, a, m0, (int)(M - m0 < TILE ? M - m0 : TILE), out + m0 * ld + r0, ld);
    }
}

/* ---- the rest of a layer ---- */

static void rmsnorm(const float *x, const float *weight, int n, float eps, float *out) {
    float inv = 1.0f / sqrtf(dot16(x, x, n) / (float)n + eps);
    for (int i = 0; i < n; i++)
        out[i] = weight[i] * (x[i] * inv);
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
    float **caches; /* 2 per layer */
} Batch;

/* qkv (M x (H + 2 KV) D): norms, rotary positions, keys and values into the cache. */
static void place_keys(const Batch *bt, const Layer *ly, int layer, float *qkv, float *tmp) {
    const Model *md = bt->md;
    int D = md->head_dim, H = md->heads, KV = md->kv_heads, width = (H + 2 * KV) * D;
    for (Py_ssize_t b = 0; b < bt->B; b++)
        for (Py_ssize_t s = 0; s < bt->S; s++) {
            float *row = qkv + (b * bt->S + s) * width;
            Py_ssize_t pos = bt->past[b] + s;
            if (md->qk_norm) {
                rmsnorm(row, ly->q_norm, H * D, md->eps, tmp);
                memcpy(row, tmp, (size_t)H * D * sizeof(float));
                rmsnorm(row + H * D, ly->k_norm, KV * D, md->eps, tmp);
                memcpy(row + H * D, tmp, (size_t)KV * D * sizeof(float));
            }
            const float *c = md->cos + pos * (D / 2), *sn = md->sin + pos * (D / 2);
            for (int h = 0; h < H + KV; h++)
                rotate(row + h * D, c, sn, D / 2);
            for (int h = 0; h < KV; h++) {
                Py_ssize_t at = ((b * KV + h) * bt->capacity + pos) * D;
                memcpy(bt->caches[2 * layer] + at, row + (H + h) * D, (size_t)D * sizeof(float));
                memcpy(bt->caches[2 * layer + 1] + at, row + (H + KV + h) * D,
                       (size_t)D * sizeof(float));
            }
        }
}

/* out (M x H D): each query over its row's keys 0 .. its position (causal). */
static void attend(const Batch *bt, int layer, const float *qkv, float *out) {
    const Model *md = bt->md;
    int D = md->head_dim, H = md->heads, KV = md->kv_heads, width = (H + 2 * KV) * D;
    float scale = 1.0f / sqrtf((float)D);
    Py_ssize_t jobs = bt->B * bt->S * H;
#pragma omp parallel num_threads(md->threads) if (md->threads > 1 && jobs >= 8)
    {
        float *score = malloc((size_t)bt->capacity * sizeof(float));
#pragma omp for schedule(static)
        for (Py_ssize_t job = 0; job < jobs; job++) {
            Py_ssize_t h = job % H, bs = job / H, b = bs / bt->S;
            Py_ssize_t pos = bt->past[b] + bs % bt->S, kvh = h / (H / KV);
            const float *q = qkv + bs * width + h * D;
            const float *keys = bt->caches[2 * layer] + (b * KV + kvh) * bt->capacity * D;
            const float *values = bt->caches[2 * layer + 1] + (b * KV + kvh) * bt->capacity * D;
            float *o = out + bs * H * D + h * D, top = -INFINITY, total = 0.0f;
            if (!score)
                continue;
            for (Py_ssize_t t = 0; t <= pos; t++) {
                score[t] = dot16(q, keys + t * D, D) * scale;
                top = fmaxf(top, score[t]);
            }
            for (Py_ssize_t t = 0; t <= pos; t++) {
                score[t] = expf(score[t] - top);
                total += score[t];
            }
            memset(o, 0, (size_t)D * sizeof(float));
            for (Py_ssize_t t = 0; t <= pos; t++) {
                float wgt = score[t] / total;
                for (int d = 0; d < D; d++)
                    o[d] += wgt * values[t * D + d];
            }
        }
        free(score);
    }
}

static void residual_row(const Model *md, float *x, const float *y, const float *weight,
                         float *tmp) {
    if (md->post_norm) {
        rmsnorm(y, weight, md->dim, md->eps, tmp);
        y = tmp;
    }
    for (int i = 0; i < md->dim; i++)
        x[i] += y[i];
}

/* x += norm(y) (post norms) or x += y; tmp: M x dim floats. */
static void residual(const Model *md, float *x, const float *y, const float *weight, Py_ssize_t M,
                     float *tmp) {
    int C = md->dim;
    FOR_ROWS(md, M, residual_row(md, x + m * C, y + m * C, weight, tmp + m * C));
}

static void normed_row(const Model *md, const float *x, const float *weight, float *h, Act *a,
                       Py_ssize_t m) {
    int C = md->dim;
    if (md->post_norm)
        memcpy(h + m * C, x + m * C, (size_t)C * sizeof(float));
    else
        rmsnorm(x + m * C, weight, C, md->eps, h + m * C);
    quantize_one(a, h, m);
}

/* h = norm(x) (pre norms) or x, quantized for w. */
static void normed_input(const Model *md, const float *x, const float *weight, Py_ssize_t M,
                         float *h, Act *a) {
    FOR_ROWS(md, M, normed_row(md, x, weight, h, a, m));
}

typedef struct {
    float *h, *qkv, *attn, *proj, *gate_up, *hidden, *tmp;
    Act in[2], mid[2]; /* by kind (0: int8, 1: int4): inputs of width dim, the MLP's hidden */
} Work;

static Act *act_for(Act *pair, int kind) { return &pair[kind == 8 ? 0 : 1]; }

/* hidden row m = silu(gate) * up of gate_up row m (gate, then up: F each), quantized into a. */
static void swiglu_row(const float *gate_up, int F, float *hidden, Act *a, Py_ssize_t m) {
    const float *gate = gate_up + m * 2 * F, *up = gate + F;
    for (int j = 0; j < F; j++)
        hidden[m * F + j] = gate[j] / (1.0f + expf(-gate[j])) * up[j];
    quantize_one(a, hidden, m);
}

static void layer_pass(const Batch *bt, int i, float *x, Work *wk) {
    const Model *md = bt->md;
    const Layer *ly = &md->layers[i];
    Py_ssize_t M = bt->B * bt->S;
    int HD = md->heads * md->head_dim, F = md->mlp_dim;
    Act *in = act_for(wk->in, ly->qkv.kind);
    normed_input(md, x, ly->attn_norm, M, wk->h, in);
    matmul(&ly->qkv, in, M, wk->qkv, ly->qkv.rows, md->threads);
    place_keys(bt, ly, i, wk->qkv, wk->tmp);
    attend(bt, i, wk->qkv, wk->attn);
    Act *mid = act_for(wk->mid, ly->o.kind);
    Act heads = {mid->kind, HD, mid->q, mid->dx, mid->init, mid->sx};
    FOR_ROWS(md, M, quantize_one(&heads, wk->attn, m));
    matmul(&ly->o, &heads, M, wk->proj, md->dim, md->threads);
    residual(md, x, wk->proj, ly->attn_norm, M, wk->h); /* h: free until the next norm */
    in = act_for(wk->in, ly->gate_up.kind);
    normed_input(md, x, ly->mlp_norm, M, wk->h, in);
    matmul(&ly->gate_up, in, M, wk->gate_up, 2 * F, md->threads);
    mid = act_for(wk->mid, ly->down.kind);
    Act hidden = {mid->kind, F, mid->q, mid->dx, mid->init, mid->sx};
    FOR_ROWS(md, M, swiglu_row(wk->gate_up, F, wk->hidden, &hidden, m));
    matmul(&ly->down, &hidden, M, wk->proj, md->dim, md->threads);
    residual(md, x, wk->proj, ly->mlp_norm, M, wk->h);
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
    for (int k = 0; k < 2; k++) {
        ok = act_alloc(&wk->in[k], k ? 4 : 8, M, C) && ok;
        ok = act_alloc(&wk->mid[k], k ? 4 : 8, M, widest) && ok;
    }
    return ok;
}

static void work_free(Work *wk) {
    free(wk->h);
    free(wk->qkv);
    free(wk->attn);
    free(wk->proj);
    free(wk->gate_up);
    free(wk->hidden);
    free(wk->tmp);
    for (int k = 0; k < 2; k++) {
        act_free(&wk->in[k]);
        act_free(&wk->mid[k]);
    }
}

/* The logits of the wanted positions (B x T of them). 0, or -1 when out of memory. */
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
        layer_pass(bt, i, x, &wk);
    for (Py_ssize_t b = 0; b < bt->B; b++)
        for (Py_ssize_t t = 0; t < T; t++)
            rmsnorm(x + (b * bt->S + wanted[b * T + t]) * C, md->final_norm, C, md->eps,
                    wk.h + (b * T + t) * C);
    Act *in = act_for(wk.in, md->head.kind);
    quantize(in, wk.h, bt->B * T);
    matmul(&md->head, in, bt->B * T, logits, md->head.rows, md->threads);
    work_free(&wk);
    return 0;
}

/* ---- Python ---- */

static const char *CAPSULE = "llm_compression.core._decode.Model";

static void model_free(PyObject *capsule) {
    Model *md = PyCapsule_GetPointer(capsule, CAPSULE);
    if (!md)
        return;
    for (int i = 0; i < md->n_views; i++)
        PyBuffer_Release(&md->views[i]);
    free(md->views);
    free(md->layers);
    free(md);
}

/* A float32 / byte buffer of at least `need` bytes, held by the model. NULL + ValueError. */
static const void *hold(Model *md, PyObject *obj, Py_ssize_t need, const char *what) {
    Py_buffer *view = &md->views[md->n_views];
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    md->n_views++;
    if (view->len < need) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, %zd needed", what, view->len, need);
        return NULL;
    }
    return view->buf;
}

static int parse_mat(Model *md, PyObject *spec, Mat *w, Py_ssize_t rows, Py_ssize_t cols,
                     const char *what) {
    PyObject *q, *scale, *offset;
    if (!PyArg_ParseTuple(spec, "innOOO", &w->kind, &w->rows, &w->cols, &q, &scale, &offset))
        return -1;
    if ((w->kind != 8 && w->kind != 4) || w->cols % PAIR || w->cols <= 0 || w->rows <= 0 ||
        (rows && w->rows != rows) || w->cols != cols || (w->kind == 4) == (offset == Py_None)) {
        PyErr_Format(PyExc_ValueError,
                     "%s: kind %d, %zd x %zd does not fit (expected %zd x %zd, columns a "
                     "multiple of %d, offsets for int4 only)",
                     what, w->kind, w->rows, w->cols, rows, cols, PAIR);
        return -1;
    }
    Py_ssize_t groups = w->rows * (w->cols / GROUP);
    w->q = hold(md, q, w->kind == 8 ? w->rows * w->cols : w->rows * w->cols / 2, what);
    w->scale = w->q ? hold(md, scale, groups * 4, what) : NULL;
    w->offset = w->kind == 4 && w->scale ? hold(md, offset, groups * 4, what) : NULL;
    return w->q && w->scale && (w->kind == 8 || w->offset) ? 0 : -1;
}

static const float *hold_norm(Model *md, PyObject *obj, Py_ssize_t n, const char *what) {
    return obj == Py_None ? NULL : hold(md, obj, n * 4, what);
}

static int parse_layer(Model *md, PyObject *spec, Layer *ly) {
    PyObject *m[4], *norms[4];
    if (!PyArg_ParseTuple(spec, "OOOOOOOO", &m[0], &m[1], &m[2], &m[3], &norms[0], &norms[1],
                          &norms[2], &norms[3]))
        return -1;
    Py_ssize_t C = md->dim, HD = md->heads * md->head_dim, KVD = md->kv_heads * md->head_dim;
    if (parse_mat(md, m[0], &ly->qkv, HD + 2 * KVD, C, "qkv") < 0 ||
        parse_mat(md, m[1], &ly->o, C, HD, "o") < 0 ||
        parse_mat(md, m[2], &ly->gate_up, 2 * (Py_ssize_t)md->mlp_dim, C, "gate_up") < 0 ||
        parse_mat(md, m[3], &ly->down, C, md->mlp_dim, "down") < 0)
        return -1;
    ly->attn_norm = hold_norm(md, norms[0], C, "attn_norm");
    ly->mlp_norm = ly->attn_norm ? hold_norm(md, norms[1], C, "mlp_norm") : NULL;
    if (!ly->attn_norm || !ly->mlp_norm)
        return -1;
    ly->q_norm = md->qk_norm ? hold_norm(md, norms[2], HD, "q_norm") : NULL;
    ly->k_norm = md->qk_norm && ly->q_norm ? hold_norm(md, norms[3], KVD, "k_norm") : NULL;
    return md->qk_norm && !(ly->q_norm && ly->k_norm) ? -1 : 0;
}

static int check_dims(const Model *md) {
    int ok = md->n_layers > 0 && md->n_layers <= MAX_LAYERS && md->dim > 0 && md->heads > 0 &&
             md->kv_heads > 0 && md->heads % md->kv_heads == 0 && md->head_dim > 0 &&
             md->head_dim % 2 == 0 && md->mlp_dim > 0 && md->max_pos > 0 && md->threads > 0;
    if (!ok)
        PyErr_SetString(PyExc_ValueError, "model dimensions out of range");
    return ok ? 0 : -1;
}

static int parse_model(Model *md, PyObject *args) {
    PyObject *cos, *sin, *final_norm, *head, *layers;
    int flags;
    if (!PyArg_ParseTuple(args, "(iiiiiii)fiiOOOOO!", &md->n_layers, &md->dim, &md->heads,
                          &md->kv_heads, &md->head_dim, &md->mlp_dim, &md->max_pos, &md->eps,
                          &flags, &md->threads, &cos, &sin, &final_norm, &head, &PyList_Type,
                          &layers))
        return -1;
    md->post_norm = flags & 1;
    md->qk_norm = (flags & 2) != 0;
    if (check_dims(md) < 0)
        return -1;
    if (PyList_GET_SIZE(layers) != md->n_layers) {
        PyErr_SetString(PyExc_ValueError, "one entry per layer expected");
        return -1;
    }
    md->views = calloc((size_t)md->n_layers * 16 + 8, sizeof(Py_buffer));
    md->layers = calloc((size_t)md->n_layers, sizeof(Layer));
    if (!md->views || !md->layers) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t table = (Py_ssize_t)md->max_pos * (md->head_dim / 2) * 4;
    md->cos = hold(md, cos, table, "cos");
    md->sin = md->cos ? hold(md, sin, table, "sin") : NULL;
    md->final_norm = md->sin ? hold_norm(md, final_norm, md->dim, "final_norm") : NULL;
    if (!md->final_norm || parse_mat(md, head, &md->head, 0, md->dim, "head") < 0)
        return -1;
    for (int i = 0; i < md->n_layers; i++)
        if (parse_layer(md, PyList_GET_ITEM(layers, i), &md->layers[i]) < 0)
            return -1;
    return 0;
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
    Py_buffer embeds, past, wanted, logits, caches[2 * MAX_LAYERS];
    int n_caches;
} StepViews;

static void release_step(StepViews *sv) {
    PyBuffer_Release(&sv->embeds);
    PyBuffer_Release(&sv->past);
    PyBuffer_Release(&sv->wanted);
    PyBuffer_Release(&sv->logits);
    for (int i = 0; i < sv->n_caches; i++)
        PyBuffer_Release(&sv->caches[i]);
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

static int step_views(const Model *md, PyObject *const *a, Batch *bt, Py_ssize_t T,
                      StepViews *sv) {
    Py_ssize_t B = bt->B, S = bt->S, C = md->dim, L = bt->capacity;
    Py_ssize_t cache = B * md->kv_heads * L * md->head_dim * 4;
    if (view(a[1], &sv->embeds, B * S * C * 4, 1, "embeds") < 0 ||
        view(a[4], &sv->past, B * 4, 0, "past") < 0 ||
        view(a[7], &sv->wanted, B * T * 8, 0, "wanted") < 0 ||
        view(a[9], &sv->logits, B * T * md->head.rows * 4, 1, "logits") < 0)
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

static PyObject *py_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "step takes 10 arguments");
        return NULL;
    }
    Model *md = PyCapsule_GetPointer(args[0], CAPSULE);
    if (!md)
        return NULL;
    Batch bt = {md, PyLong_AsSsize_t(args[2]), PyLong_AsSsize_t(args[3]),
                PyLong_AsSsize_t(args[6]), NULL, NULL};
    Py_ssize_t T = PyLong_AsSsize_t(args[8]);
    if (PyErr_Occurred())
        return NULL;
    if (bt.B < 1 || bt.S < 1 || bt.capacity < 1 || T < 1 || bt.B > (1 << 20) ||
        bt.S > md->max_pos || T > bt.S) {
        PyErr_SetString(PyExc_ValueError, "batch sizes out of range");
        return NULL;
    }
    StepViews *sv = calloc(1, sizeof(StepViews));
    float **caches = malloc(sizeof(float *) * 2 * (size_t)md->n_layers);
    int rc = -1;
    if (!sv || !caches) {
        PyErr_NoMemory();
    } else if (step_views(md, args, &bt, T, sv) == 0) {
        for (int i = 0; i < 2 * md->n_layers; i++)
            caches[i] = sv->caches[i].buf;
        bt.past = sv->past.buf;
        bt.caches = caches;
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

static PyObject *py_matmul(PyObject *self, PyObject *args) {
    PyObject *spec, *x, *out;
    Py_ssize_t M;
    int threads = 1;
    if (!PyArg_ParseTuple(args, "OOnO|i", &spec, &x, &M, &out, &threads))
        return NULL;
    Model md = {0};
    Py_buffer views[3] = {{0}}, xv = {0}, ov = {0};
    md.views = views;
    Mat w;
    PyObject *result = NULL;
    Act a = {0};
    if (M < 1 || !PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 6) {
        PyErr_SetString(PyExc_ValueError, "matmul(matrix, x, M >= 1, out)");
        goto done;
    }
    Py_ssize_t cols = PyLong_AsSsize_t(PyTuple_GET_ITEM(spec, 2));
    if (PyErr_Occurred() || parse_mat(&md, spec, &w, 0, cols, "matrix") < 0 ||
        view(x, &xv, M * w.cols * 4, 0, "x") < 0 || view(out, &ov, M * w.rows * 4, 1, "out") < 0)
        goto done;
    if (!act_alloc(&a, w.kind, M, w.cols)) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS quantize(&a, xv.buf, M);
    matmul(&w, &a, M, ov.buf, w.rows, threads > 1 ? threads : 1);
    Py_END_ALLOW_THREADS result = Py_None;
    Py_INCREF(result);
done:
    act_free(&a);
    for (int i = 0; i < md.n_views; i++)
        PyBuffer_Release(&views[i]);
    PyBuffer_Release(&xv);
    PyBuffer_Release(&ov);
    return result;
}

/* Rows `ids` of the head, dequantized as GroupQuantized.dequantize does (d * q, then + m: two
 * roundings): the tied token table's lookups, from the decoder's one copy. */
static PyObject *py_lookup(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "lookup(model, ids, out)");
        return NULL;
    }
    Model *md = PyCapsule_GetPointer(args[0], CAPSULE);
    Py_buffer ids = {0}, out = {0};
    PyObject *result = NULL;
    if (!md || PyObject_GetBuffer(args[1], &ids, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    const Mat *w = &md->head;
    Py_ssize_t n = ids.len / 8, groups = w->cols / GROUP;
    if (view(args[2], &out, n * w->cols * 4, 1, "out") < 0)
        goto done;
    const int64_t *rows = ids.buf;
    for (Py_ssize_t i = 0; i < n; i++)
        if (rows[i] < 0 || rows[i] >= w->rows) {
            PyErr_Format(PyExc_ValueError, "token id %lld is outside 0 .. %zd", (long long)rows[i],
                         w->rows - 1);
            goto done;
        }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t r = rows[i];
        float *o = (float *)out.buf + i * w->cols;
        for (Py_ssize_t c = 0; c < w->cols; c++) {
            Py_ssize_t g = r * groups + c / GROUP;
            if (w->kind == 8) {
                o[c] = (float)((int)w->q[r * w->cols + c] - 128) * w->scale[g];
            } else {
                uint8_t b = w->q[r * (w->cols / 2) + c / 2];
                o[c] = (float)(c % 2 ? b >> 4 : b & 0x0F) * w->scale[g] + w->offset[g];
            }
        }
    }
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
    {"step", (PyCFunction)(void (*)(void))py_step, METH_FASTCALL, "one decoder pass"},
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
