/* Fused message passing over one dense edge block, on the CPU. wgraph.kernels.native builds this
 * file with the machine's C compiler on first use (a few seconds) and calls it through ctypes.
 *
 * A block has R rows and C columns (out x in of the layer's weight), K raw features per edge and
 * H hidden channels. With row states p (B, R, H), column states q (B, C, H), edge features
 * x (B, R, C, K) and the lift c (K, H):
 *
 *     z[b,v,u,:] = p[b,v,:] + q[b,u,:] + sum_k x[b,v,u,k] c[k,:]
 *
 * forward:  rows receive     out[b,v,:] = s sum_u phi(z[b,v,u,:])    (cols_receive = 0)
 *           columns receive  out[b,u,:] = s sum_v phi(z[b,v,u,:])    (cols_receive = 1)
 *           (s = scale: 1 for a sum, 1 / senders for a mean)
 * backward: with g the gradient of the receivers and G = s g * phi'(z) (elementwise),
 *           gp[b,v] = sum_u G,  gq[b,u] = sum_v G,  gc[k] = sum_{b,v,u} x[b,v,u,k] G,
 *           gx[b,v,u,k] = sum_h G[h] c[k,h]       (each only where its pointer is not NULL)
 *
 * Every pre-activation is recomputed in registers, W = 16 channels at a time (H must be a multiple
 * of W: the caller pads; Hr <= H channels are real, the rest zero); nothing of size B x R x C x H is
 * ever stored.
 *
 * Activations: the build defines WG_ACT_<NAME> as each activation's code, its position in
 * wgraph.kernels.spec.ACTIVATION_TABLE; WG_ACTS lists those this file implements (wg_act_known).
 * NaN and Inf propagate as in torch: ReLU is z <= 0 ? 0 : z (a NaN stays NaN) and its derivative
 * z <= 0 ? 0 : 1 (torch's threshold_backward passes the gradient of a NaN on); see relu_keeps.
 *
 * Threads (OpenMP, when built with it) take contiguous ranges of the B * R (network, row) pairs.
 * Column sums of a network that a thread covers whole go straight to the output; the networks at
 * the two ends of a thread's range may be shared with its neighbours, so their column sums go to
 * per-thread partial buffers, added in thread order afterwards: results do not depend on
 * scheduling. p, q and g may be strided over networks and rows (their H channels contiguous); x,
 * c and every output are contiguous, and outputs are zero-initialized by the caller.
 *
 * The file includes itself once per floating type (float, double) with WG_T defined.
 */
#ifndef WG_T

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#define WG_THREAD_IDS(t, tn) do { t = omp_get_thread_num(); tn = omp_get_num_threads(); } while (0)
#define WG_THREADS(n) ((n) < 1 ? 1 : (n))
#else
#define WG_THREAD_IDS(t, tn) do { } while (0)
#define WG_THREADS(n) 1
#endif

typedef int64_t i64;

/* The activations implemented here; each needs its code WG_ACT_<NAME> from the build. */
#define WG_ACTS(X) X(IDENTITY) X(RELU) X(TANH) X(SILU) X(GELU)
#define WG_ACT_ENUM(NAME) ACT_##NAME = WG_ACT_##NAME,
enum { WG_ACTS(WG_ACT_ENUM) };

/* Channels per chunk: 16 floats fill one AVX-512 register (two AVX2 ones). */
#define W 16

/* Kernel sizes up to this keep their lift gradients in registers during the backward. */
#define WG_KMAX 16

#define WG_CAT_(a, b) a##_##b
#define WG_CAT(a, b) WG_CAT_(a, b)
#define WG_FN(name) WG_CAT(name, WG_S)
#define WG_INLINE static inline __attribute__((always_inline))

/* CALL(K, act) with K and act as constants where they take their common values (ReLU; Linear
 * weights K = 1, 3x3 kernels K = 9), so that those cases compile to loops of their own. */
#define WG_SPECIALIZE(CALL)                                                                          \
    do {                                                                                             \
        if (act == ACT_RELU) {                                                                       \
            if (K == 1) CALL(1, ACT_RELU); else if (K == 9) CALL(9, ACT_RELU); else CALL(K, ACT_RELU); \
        } else {                                                                                     \
            if (K == 1) CALL(1, act); else if (K == 9) CALL(9, act); else CALL(K, act);              \
        }                                                                                            \
    } while (0)

/* Thread t of nt takes pairs [s, e) of n. */
static inline void range_of(i64 n, int t, int nt, i64 *s, i64 *e) {
    *s = n * t / nt;
    *e = n * (t + 1) / nt;
}

/* The network b and its rows v0 <= v < v1 that pairs [f, e) of a thread's range start with. */
static inline void segment_of(i64 f, i64 e, i64 R, i64 *b, i64 *v0, i64 *v1) {
    *b = f / R;
    *v0 = f % R;
    *v1 = e - *b * R < R ? e - *b * R : R;
}

/* Per-thread partial column sums: two (C, H) slots a thread, and the network each holds (-1: none).
 * Returns 0 when out of memory. */
static int alloc_parts(int nt, i64 slot_size, size_t elem, void **part, i64 **part_b) {
    *part = calloc((size_t)(2 * nt * slot_size), elem);
    *part_b = (i64 *)malloc(sizeof(i64) * 2 * nt);
    if (!*part || !*part_b) {
        free(*part);
        free(*part_b);
        return 0;
    }
    for (int i = 0; i < 2 * nt; i++) (*part_b)[i] = -1;
    return 1;
}

#define WG_T float
#define WG_S f32
#define WG_EXP expf
#define WG_TANH tanhf
#define WG_ERF erff
#define WG_I int32_t
#define WG_U uint32_t
#define WG_NEG_INF_BITS (-8388608) /* -inf's bits as a signed integer */
#include __FILE__
#undef WG_T
#undef WG_S
#undef WG_EXP
#undef WG_TANH
#undef WG_ERF
#undef WG_I
#undef WG_NEG_INF_BITS
#undef WG_U

#define WG_T double
#define WG_S f64
#define WG_EXP exp
#define WG_TANH tanh
#define WG_ERF erf
#define WG_I int64_t
#define WG_U uint64_t
#define WG_NEG_INF_BITS (-4503599627370496LL)
#include __FILE__

/* Bumped whenever a signature changes; the loader checks it. */
int wg_abi_version(void) { return 5; }

/* Whether this file implements the activation of code act. */
#define WG_ACT_IS(NAME) || act == ACT_##NAME
int wg_act_known(int act) { return 0 WG_ACTS(WG_ACT_IS); }

/* Channels per vector chunk: callers pad H to a multiple of it. */
int wg_lanes(void) { return W; }

#else /* ------------------------------------------------------------ one floating type: WG_T */

#define T WG_T

static inline T WG_FN(act)(T z, int act) {
    switch (act) {
    case ACT_RELU: return z <= 0 ? 0 : z;
    case ACT_TANH: return WG_TANH(z);
    case ACT_SILU: return z / (1 + WG_EXP(-z));
    case ACT_GELU: return (T)0.5 * z * (1 + WG_ERF(z * (T)0.7071067811865476));
    default: return z;
    }
}

static inline T WG_FN(dact)(T z, int act) {
    switch (act) {
    case ACT_RELU: return z <= 0 ? 0 : 1;
    case ACT_TANH: { T t = WG_TANH(z); return 1 - t * t; }
    case ACT_SILU: { T s = 1 / (1 + WG_EXP(-z)); return s * (1 + z * (1 - s)); }
    case ACT_GELU:
        return (T)0.5 * (1 + WG_ERF(z * (T)0.7071067811865476)) + z * WG_EXP((T)-0.5 * z * z) * (T)0.3989422804014327;
    default: return 1;
    }
}

/* A chunk of W channels as one vector value (GCC / Clang vector extensions: one AVX-512 register
 * for W floats, split into narrower registers where the machine has them). VI: a same-sized integer
 * vector, for masks. */
typedef T WG_FN(V) __attribute__((vector_size(W * sizeof(T))));
typedef WG_I WG_FN(VI) __attribute__((vector_size(W * sizeof(T))));
typedef WG_U WG_FN(VU) __attribute__((vector_size(W * sizeof(T))));
#define V WG_FN(V)
#define VI WG_FN(VI)
#define VU WG_FN(VU)

/* Unaligned vector loads and stores of one chunk (memcpy of a constant size: one vector move). */
WG_INLINE V WG_FN(vload)(const T *p) { V v; memcpy(&v, p, sizeof v); return v; }
WG_INLINE void WG_FN(vstore)(T *p, V v) { memcpy(p, &v, sizeof v); }
WG_INLINE void WG_FN(vadd)(T *p, V v) { WG_FN(vstore)(p, WG_FN(vload)(p) + v); }

/* z = p + q + sum_k x[k] c[k] for one edge and one chunk; pv, qu, c start at the chunk. Two partial
 * sums halve the chain of dependent multiply-adds. */
WG_INLINE V WG_FN(zvec)(const T *pv, const T *qu, const T *xe, const T *c, i64 K, i64 H) {
    V z0 = WG_FN(vload)(pv), z1 = WG_FN(vload)(qu);
    i64 k = 0;
    for (; k + 1 < K; k += 2) {
        z0 += xe[k] * WG_FN(vload)(c + k * H);
        z1 += xe[k + 1] * WG_FN(vload)(c + (k + 1) * H);
    }
    if (k < K) z0 += xe[k] * WG_FN(vload)(c + k * H);
    return z0 + z1;
}

/* ReLU as torch computes it, on the bits of z (integer compares of this vector type vectorize where
 * its float compares do not): z is kept unless it is -0 ... -inf, that is unless its bits, read as a
 * signed integer, are at most those of -inf; so a NaN of either sign is kept. Its derivative passes
 * g on where z is kept and is not +0 (threshold_backward: z <= 0 ? 0 : g, a NaN passes). */
WG_INLINE VI WG_FN(relu_keeps)(V z) { return (VI)((VI)z > WG_NEG_INF_BITS); }
WG_INLINE VI WG_FN(nonzero)(V z) { return (VI)((VU)z | -(VU)z) >> (8 * sizeof(T) - 1); } /* -1 unless z = +0 */

/* phi(z) and g * phi'(z) of a chunk (zero channels stay zero: phi(0) = 0 for every activation) */
WG_INLINE V WG_FN(vact)(V z, int act) {
    if (act == ACT_RELU) return (V)((VI)z & WG_FN(relu_keeps)(z));
    if (act != ACT_IDENTITY)
        for (int j = 0; j < W; j++) z[j] = WG_FN(act)(z[j], act);
    return z;
}
WG_INLINE V WG_FN(vgrad)(V z, V g, int act) {
    if (act == ACT_RELU) return (V)((VI)g & WG_FN(relu_keeps)(z) & WG_FN(nonzero)(z));
    if (act == ACT_IDENTITY) return g;
    for (int j = 0; j < W; j++) z[j] = g[j] * WG_FN(dact)(z[j], act);
    return z;
}

/* Forward of rows v0 <= v < v1 of one network and one chunk of W channels (every pointer but x at
 * the chunk's first channel). Each receiver's sum stays in a register while its edges are swept:
 * rows receive: for each row, over its columns; columns receive: for each column, over the rows
 * (then added to out, which other ranges of the same network may share). */
WG_INLINE void WG_FN(fwd_chunk)(const T *restrict pb, i64 p_sr, const T *restrict qb, i64 q_sr,
                                const T *restrict xb, const T *restrict c, int cols_receive, i64 v0, i64 v1, i64 C,
                                i64 K, i64 H, int act, T scale, T *restrict ob) {
    if (!cols_receive) {
        for (i64 v = v0; v < v1; v++) {
            const T *pv = pb + v * p_sr;
            const T *xr = xb + v * C * K;
            V acc = {0};
            for (i64 u = 0; u < C; u++) acc += WG_FN(vact)(WG_FN(zvec)(pv, qb + u * q_sr, xr + u * K, c, K, H), act);
            WG_FN(vstore)(ob + v * H, scale * acc);
        }
    } else {
        for (i64 u = 0; u < C; u++) {
            const T *qu = qb + u * q_sr;
            V acc = {0};
            for (i64 v = v0; v < v1; v++)
                acc += WG_FN(vact)(WG_FN(zvec)(pb + v * p_sr, qu, xb + (v * C + u) * K, c, K, H), act);
            WG_FN(vadd)(ob + u * H, scale * acc);
        }
    }
}

/* The forward of rows v0..v1 of one network, all channels (K and act constants: WG_SPECIALIZE). */
WG_INLINE void WG_FN(fwd_rows)(const T *pb, i64 p_sr, const T *qb, i64 q_sr, const T *xb, const T *c,
                               int cols_receive, i64 v0, i64 v1, i64 C, i64 K, i64 H, int act, T scale, T *ob) {
    for (i64 h0 = 0; h0 < H; h0 += W)
        WG_FN(fwd_chunk)(pb + h0, p_sr, qb + h0, q_sr, xb, c + h0, cols_receive, v0, v1, C, K, H, act, scale, ob + h0);
}

/* Backward of rows v0 <= v < v1 of one network and one chunk of W channels (every pointer but x and
 * gx already at the chunk's first channel): each edge's G = s g * phi'(z) is recomputed and summed
 * into its row's gradient (gp), its column's (gq), the lift's (gc: for K <= WG_KMAX, K accumulators
 * kept in registers for the whole range, reusing the broadcasts of x that z needed) and its own
 * (gx: dot products with the lift's rows over the chunk's nl real channels, summed over chunks; a
 * padding channel's z is x * 0, NaN for an infinite x, and must not reach gx). */
WG_INLINE void WG_FN(bwd_chunk)(const T *restrict pb, i64 p_sr, const T *restrict qb, i64 q_sr,
                                const T *restrict xb, const T *restrict c, const T *restrict gb, i64 g_sr,
                                int cols_receive, i64 v0, i64 v1, i64 C, i64 K, i64 H, int nl, int act, T scale,
                                T *restrict gpb, T *restrict gqb, T *restrict gct, T *restrict gxb) {
    const int in_regs = K <= WG_KMAX;
    V lacc[WG_KMAX];
    for (i64 k = 0; k < WG_KMAX; k++) lacc[k] = (V){0};
    for (i64 v = v0; v < v1; v++) {
        const T *pv = pb + v * p_sr;
        const T *xr = xb + v * C * K;
        V racc = {0}, g = {0};
        if (!cols_receive) g = scale * WG_FN(vload)(gb + v * g_sr);
        for (i64 u = 0; u < C; u++) {
            const T *xe = xr + u * K;
            if (cols_receive) g = scale * WG_FN(vload)(gb + u * g_sr);
            const V G = WG_FN(vgrad)(WG_FN(zvec)(pv, qb + u * q_sr, xe, c, K, H), g, act);
            racc += G;
            if (gqb) WG_FN(vadd)(gqb + u * H, G);
            if (gct) {
                if (in_regs) {
                    for (i64 k = 0; k < K; k++) lacc[k] += xe[k] * G;
                } else {
                    for (i64 k = 0; k < K; k++) WG_FN(vadd)(gct + k * H, xe[k] * G);
                }
            }
            if (gxb) {
                T *gxe = gxb + (v * C + u) * K;
                for (i64 k = 0; k < K; k++) {
                    const V d = G * WG_FN(vload)(c + k * H);
                    T acc = 0;
                    for (int j = 0; j < nl; j++) acc += d[j];
                    gxe[k] += acc;
                }
            }
        }
        if (gpb) WG_FN(vadd)(gpb + v * H, racc);
    }
    if (gct && in_regs)
        for (i64 k = 0; k < K; k++) WG_FN(vadd)(gct + k * H, lacc[k]);
}

/* The backward of rows v0..v1 of one network, all channels (K and act constants: WG_SPECIALIZE; Hr
 * of the H channels are real). */
WG_INLINE void WG_FN(bwd_rows)(const T *pb, i64 p_sr, const T *qb, i64 q_sr, const T *xb, const T *c, const T *gb,
                               i64 g_sr, int cols_receive, i64 v0, i64 v1, i64 C, i64 K, i64 H, i64 Hr, int act,
                               T scale, T *gpb, T *gqb, T *gct, T *gxb) {
    for (i64 h0 = 0; h0 < H; h0 += W) {
        const int nl = Hr - h0 < W ? (int)(Hr - h0) : W;
        WG_FN(bwd_chunk)(pb + h0, p_sr, qb + h0, q_sr, xb, c + h0, gb + h0, g_sr, cols_receive, v0, v1, C, K, H, nl,
                         act, scale, gpb ? gpb + h0 : NULL, gqb ? gqb + h0 : NULL, gct ? gct + h0 : NULL, gxb);
    }
}

/* Where thread t puts the column sums of network b: the output itself when its range holds every
 * row of b, else a partial slot (0 for the range's first network, 1 for its last). */
WG_INLINE T *WG_FN(column_sums)(T *out, T *part, i64 *part_b, int t, int first, i64 b, i64 v0, i64 v1, i64 R, i64 CH) {
    if (v0 == 0 && v1 == R) return out + b * CH;
    const int slot = 2 * t + (first ? 0 : 1);
    part_b[slot] = b;
    return part + slot * CH;
}

/* Adds the partial column buffers of every thread, in thread order, to out[part_b[i]]. */
static void WG_FN(add_parts)(T *out, const T *part, const i64 *part_b, int slots, i64 CH) {
    for (int i = 0; i < slots; i++) {
        if (part_b[i] < 0) continue;
        T *dst = out + part_b[i] * CH;
        const T *src = part + (i64)i * CH;
        for (i64 j = 0; j < CH; j++) dst[j] += src[j];
    }
}

int WG_FN(wg_forward)(const T *p, i64 p_sb, i64 p_sr, const T *q, i64 q_sb, i64 q_sr, const T *x, const T *c,
                      T *out, i64 B, i64 R, i64 C, i64 K, i64 H, int act, T scale, int cols_receive, int nthreads) {
    if (H % W) return 2;
    const i64 n = B * R;
    int nt = WG_THREADS(nthreads);
    if (nt > n) nt = (int)(n > 0 ? n : 1);
    T *part = NULL; /* columns receive: per-thread partial column sums */
    i64 *part_b = NULL;
    if (cols_receive && nt > 1 && !alloc_parts(nt, C * H, sizeof(T), (void **)&part, &part_b)) return 1;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int t = 0, tn = 1;
        WG_THREAD_IDS(t, tn);
        i64 s, e, b, v0, v1;
        range_of(n, t, tn, &s, &e);
        for (i64 f = s; f < e; f = b * R + v1) {
            segment_of(f, e, R, &b, &v0, &v1);
            T *ob = cols_receive ? WG_FN(column_sums)(out, part, part_b, t, f == s, b, v0, v1, R, C * H)
                                 : out + b * R * H; /* rows receive: rows v0..v1 of this network */
#define WG_FWD(KK, AA)                                                                                           \
    WG_FN(fwd_rows)(p + b * p_sb, p_sr, q + b * q_sb, q_sr, x + b * R * C * K, c, cols_receive, v0, v1, C, KK, H, AA, \
                    scale, ob)
            WG_SPECIALIZE(WG_FWD);
#undef WG_FWD
        }
    }
    if (part) {
        WG_FN(add_parts)(out, part, part_b, 2 * nt, C * H);
        free(part);
        free(part_b);
    }
    return 0;
}

int WG_FN(wg_backward)(const T *p, i64 p_sb, i64 p_sr, const T *q, i64 q_sb, i64 q_sr, const T *x, const T *c,
                       const T *g, i64 g_sb, i64 g_sr, T *gp, T *gq, T *gc, T *gx, i64 B, i64 R, i64 C, i64 K, i64 Hr,
                       i64 H, int act, T scale, int cols_receive, int nthreads) {
    if (H % W) return 2;
    const i64 n = B * R;
    int nt = WG_THREADS(nthreads);
    if (nt > n) nt = (int)(n > 0 ? n : 1);
    T *part = NULL, *gcs = NULL; /* per thread: partial column gradients, and a (K, H) lift gradient */
    i64 *part_b = NULL;
    if (nt > 1) {
        if (gq && !alloc_parts(nt, C * H, sizeof(T), (void **)&part, &part_b)) return 1;
        gcs = gc ? (T *)calloc((size_t)(nt * K * H), sizeof(T)) : NULL;
        if (gc && !gcs) { free(part); free(part_b); return 1; }
    }
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int t = 0, tn = 1;
        WG_THREAD_IDS(t, tn);
        i64 s, e, b, v0, v1;
        range_of(n, t, tn, &s, &e);
        T *gct = gc ? (nt > 1 ? gcs + (i64)t * K * H : gc) : NULL;
        for (i64 f = s; f < e; f = b * R + v1) {
            segment_of(f, e, R, &b, &v0, &v1);
            T *gqb = gq ? WG_FN(column_sums)(gq, part, part_b, t, f == s, b, v0, v1, R, C * H) : NULL;
#define WG_BWD(KK, AA)                                                                                             \
    WG_FN(bwd_rows)(p + b * p_sb, p_sr, q + b * q_sb, q_sr, x + b * R * C * K, c, g + b * g_sb, g_sr, cols_receive, \
                    v0, v1, C, KK, H, Hr, AA, scale, gp ? gp + b * R * H : NULL, gqb, gct,                     \
                    gx ? gx + b * R * C * K : NULL)
            WG_SPECIALIZE(WG_BWD);
#undef WG_BWD
        }
    }
    if (nt > 1) {
        if (part) WG_FN(add_parts)(gq, part, part_b, 2 * nt, C * H);
        if (gcs)
            for (int i = 0; i < nt; i++)
                for (i64 j = 0; j < K * H; j++) gc[j] += gcs[(i64)i * K * H + j];
    }
    free(part);
    free(part_b);
    free(gcs);
    return 0;
}

#undef T
#undef V
#undef VI
#undef VU
#endif
