/* The rotation-family and reflection gradients for short rows (D <= 8), as plain C loops that the
 * compiler vectorises across rows: torch.compile does not vectorise reductions this short (it runs
 * the kernels of kernels.py one row at a time), which is why short rows come here. The formulas,
 * constants and fallbacks are those of quantize/estimators/kernels.py, each row's in the same order of operations
 * (built with -ffp-contract=off, no fused multiply-adds); torch may sum a row's D products in
 * another order, so results agree with the torch kernels' to fp32 rounding, not bit for bit, and a
 * row within rounding of a fallback threshold may fall on the other side. rvq_cli/native builds
 * this file; quantize/estimators/native.py calls it.
 *
 * Every row gives five dot products (e.e, q.q, e.q, e.g, q.g), from which three coefficients
 * follow, and the result is lam g + alpha e + beta q. D is a constant in every loop. Two ways
 * through the rows, both vectorised across rows by the compiler and giving identical results:
 *   rows   one row after another, the compiler interleaving the loads of 8 or 16 rows (D = 1, 3, 4);
 *   tiles  16 rows at a time transposed into a local D x 16 tile, so that every step is a plain
 *          loop over the 16 rows (D = 2, 5 ... 8; the transposes fully unrolled for D = 5, 6, 7),
 *          the last n mod 16 rows one by one.
 * The choice is measured: with gcc 12 on a Zen 5 core, the kernel alone at 65,536 rows took
 * (rows / tiles, ms) 0.11 / 0.15 at D = 3, 0.14 / 0.22 at D = 4, 0.37 / 0.24 at D = 5,
 * 0.71 / 0.28 at D = 6, 1.2 / 0.33 at D = 7 and 0.48 / 0.18 at D = 8.
 *
 * Every exported function takes row-major float32 arrays e, q, g, out of n rows of d values and
 * returns 0, or 1 for a d or gamma code this file has no loop for. */

#include <stdint.h>
#include <math.h>

#define NORM_EPS2 1e-12f        /* NORM_EPS**2: rows with |e| or |q| at or below 1e-6 fall back */
#define ANGLE_EPS 1e-4f         /* 1 +- cos(theta) at or below this: plane or mirror undefined */
#define INV_SQ_DIST_FLOOR 1e-6f /* floor on |q - e|^2 in gamma = 1 / (8 |q - e|^2) */
#define MAXF(a, b) ((a) > (b) ? (a) : (b)) /* clamp_min; fmaxf would block vectorisation */
#define FINITE(x) (((x) - (x)) == 0.f)     /* false for inf and nan */
#define INLINE static inline __attribute__((always_inline))
#define W 16                               /* rows per tile */

enum { ROTATION, REFLECTION };

/* gamma codes, as in kernels.py: 0 |q|/|e|, 1 one, 2 1/(8|q - e|^2), 3 a constant, 4 1/|e| */
INLINE float gamma_of(float a2, float b2, float p, float ia, float ib, const int gamma_code, const float gamma_const) {
    if (gamma_code == 0) return b2 * ib * ia;
    if (gamma_code == 1) return 1.f;
    if (gamma_code == 2) return 1.f / (8.f * MAXF(a2 + b2 - 2.f * p, INV_SQ_DIST_FLOOR));
    if (gamma_code == 4) return ia;
    return gamma_const;
}

/* one row's coefficients (lam, alpha, beta), for the rows that do not fill a tile */
INLINE void row_coef(const int kind, float a2, float b2, float p, float u, float v, int gamma_code,
                     float gamma_const, int tangent, float c[3]) {
    float ia = 1.f / sqrtf(MAXF(a2, NORM_EPS2)); /* 1/|e| */
    float ib = 1.f / sqrtf(MAXF(b2, NORM_EPS2)); /* 1/|q| */
    if (kind == ROTATION) {
        float opc = 1.f + p * ia * ib; /* 1 + cos(theta) */
        int ok = (a2 > NORM_EPS2) & (b2 > NORM_EPS2) & (opc > ANGLE_EPS) & FINITE(a2 + b2 + p);
        float t = (u * ia + v * ib) / MAXF(opc, ANGLE_EPS);
        float alpha = (2.f * v * ib - t) * ia, beta = -t * ib;
        float gam = gamma_of(a2, b2, p, ia, ib, gamma_code, gamma_const);
        if (tangent) alpha = alpha - v * ib * ia;
        c[0] = ok ? gam : 1.f; c[1] = ok ? gam * alpha : 0.f; c[2] = ok ? gam * beta : 0.f;
    } else {
        int ok = (a2 > NORM_EPS2) & (b2 > NORM_EPS2) & FINITE(a2 + b2 + p);
        float omc = 1.f - p * ia * ib; /* 1 - cos(theta) */
        int mirror = ok & (omc > ANGLE_EPS);
        float w = (u * ia - v * ib) / MAXF(omc, ANGLE_EPS);
        float lam = ok ? b2 * ib * ia : 1.f;
        c[0] = lam; c[1] = mirror ? -lam * w * ia : 0.f; c[2] = mirror ? lam * w * ib : 0.f;
    }
}

INLINE void by_rows(const float *restrict e, const float *restrict q, const float *restrict g, float *restrict out,
                    int64_t n, const int d, const int kind, int gamma_code, float gamma_const, int tangent) {
    for (int64_t i = 0; i < n; i++) {
        const float *ei = e + i * d, *qi = q + i * d, *gi = g + i * d;
        float a2 = 0.f, b2 = 0.f, p = 0.f, u = 0.f, v = 0.f, c[3];
        for (int k = 0; k < d; k++) a2 += ei[k] * ei[k];
        for (int k = 0; k < d; k++) b2 += qi[k] * qi[k];
        for (int k = 0; k < d; k++) p += ei[k] * qi[k];
        for (int k = 0; k < d; k++) u += ei[k] * gi[k];
        for (int k = 0; k < d; k++) v += qi[k] * gi[k];
        row_coef(kind, a2, b2, p, u, v, gamma_code, gamma_const, tangent, c);
        for (int k = 0; k < d; k++) out[i * d + k] = c[0] * gi[k] + c[1] * ei[k] + c[2] * qi[k];
    }
}

INLINE void load_tile(const float *restrict src, float dst[8][W], const int d, const int unrolled) {
    if (unrolled) {
        _Pragma("GCC unroll 16") for (int j = 0; j < W; j++)
            _Pragma("GCC unroll 8") for (int k = 0; k < d; k++) dst[k][j] = src[j * d + k];
    } else {
        for (int j = 0; j < W; j++)
            for (int k = 0; k < d; k++) dst[k][j] = src[j * d + k];
    }
}

INLINE void store_tile(float src[8][W], float *restrict dst, const int d, const int unrolled) {
    if (unrolled) {
        _Pragma("GCC unroll 16") for (int j = 0; j < W; j++)
            _Pragma("GCC unroll 8") for (int k = 0; k < d; k++) dst[j * d + k] = src[k][j];
    } else {
        for (int j = 0; j < W; j++)
            for (int k = 0; k < d; k++) dst[j * d + k] = src[k][j];
    }
}

/* the coefficients of one tile's 16 rows in one branch-free loop; gamma and tangent constants */
INLINE void tile_coef_for(const int kind, const float *a2, const float *b2, const float *p, const float *u,
                          const float *v, const int gamma_code, const float gamma_const, const int tangent,
                          float *lam, float *alpha, float *beta) {
    for (int j = 0; j < W; j++) {
        float c[3];
        row_coef(kind, a2[j], b2[j], p[j], u[j], v[j], gamma_code, gamma_const, tangent, c);
        lam[j] = c[0]; alpha[j] = c[1]; beta[j] = c[2];
    }
}

#define COEF(GC, TAN) tile_coef_for(ROTATION, a2, b2, p, u, v, GC, gamma_const, TAN, lam, alpha, beta); return;

/* the same, with gamma and tangent chosen once per tile */
INLINE void tile_coef(const int kind, const float *a2, const float *b2, const float *p, const float *u,
                      const float *v, int gamma_code, float gamma_const, int tangent, float *lam, float *alpha,
                      float *beta) {
    if (kind == REFLECTION) {
        tile_coef_for(REFLECTION, a2, b2, p, u, v, 0, 0.f, 0, lam, alpha, beta);
        return;
    }
    switch (gamma_code * 2 + (tangent != 0)) {
    case 0: COEF(0, 0) case 1: COEF(0, 1) case 2: COEF(1, 0) case 3: COEF(1, 1) case 4: COEF(2, 0)
    case 5: COEF(2, 1) case 6: COEF(3, 0) case 7: COEF(3, 1) case 8: COEF(4, 0) default: COEF(4, 1)
    }
}

INLINE void by_tiles(const float *restrict e, const float *restrict q, const float *restrict g, float *restrict out,
                     int64_t n, const int d, const int kind, int gamma_code, float gamma_const, int tangent) {
    const int unrolled = d >= 5 && d <= 7;
    int64_t tiles = n / W;
    for (int64_t t = 0; t < tiles; t++) {
        int64_t at = t * W * d;
        float E[8][W], Q[8][W], G[8][W];
        load_tile(e + at, E, d, unrolled);
        load_tile(q + at, Q, d, unrolled);
        load_tile(g + at, G, d, unrolled);
        float a2[W], b2[W], p[W], u[W], v[W], lam[W], alpha[W], beta[W];
        for (int j = 0; j < W; j++) a2[j] = b2[j] = p[j] = u[j] = v[j] = 0.f;
        for (int k = 0; k < d; k++)
            for (int j = 0; j < W; j++) {
                a2[j] += E[k][j] * E[k][j]; b2[j] += Q[k][j] * Q[k][j]; p[j] += E[k][j] * Q[k][j];
                u[j] += E[k][j] * G[k][j]; v[j] += Q[k][j] * G[k][j];
            }
        tile_coef(kind, a2, b2, p, u, v, gamma_code, gamma_const, tangent, lam, alpha, beta);
        for (int k = 0; k < d; k++)
            for (int j = 0; j < W; j++) E[k][j] = lam[j] * G[k][j] + alpha[j] * E[k][j] + beta[j] * Q[k][j];
        store_tile(E, out + at, d, unrolled);
    }
    int64_t done = tiles * W * d; /* the last n mod 16 rows */
    by_rows(e + done, q + done, g + done, out + done, n - tiles * W, d, kind, gamma_code, gamma_const, tangent);
}

/* D = 1, 3, 4 go row by row, which is faster there than tiles, with gamma and tangent constants in
 * the loop (a branch inside it would stop the vectorising) */
#define ROWS_AS(D, GC, TAN) by_rows(e, q, g, out, n, D, ROTATION, GC, gamma_const, TAN); return 0;
#define ROWS_D(D)                                                                                        \
    case D:                                                                                              \
        switch (gamma_code * 2 + (tangent != 0)) {                                                       \
        case 0: ROWS_AS(D, 0, 0) case 1: ROWS_AS(D, 0, 1) case 2: ROWS_AS(D, 1, 0) case 3: ROWS_AS(D, 1, 1) \
        case 4: ROWS_AS(D, 2, 0) case 5: ROWS_AS(D, 2, 1) case 6: ROWS_AS(D, 3, 0) case 7: ROWS_AS(D, 3, 1) \
        case 8: ROWS_AS(D, 4, 0) default: ROWS_AS(D, 4, 1)                                               \
        }
#define TILES_D(D, KIND) case D: by_tiles(e, q, g, out, n, D, KIND, gamma_code, gamma_const, tangent); return 0;

int rvq_rotation_vjp(const float *e, const float *q, const float *g, float *out, int64_t n, int d,
                     int gamma_code, float gamma_const, int tangent) {
    if (gamma_code < 0 || gamma_code > 4) return 1;
    switch (d) {
        ROWS_D(1) TILES_D(2, ROTATION) ROWS_D(3) ROWS_D(4)
        TILES_D(5, ROTATION) TILES_D(6, ROTATION) TILES_D(7, ROTATION) TILES_D(8, ROTATION)
    default: return 1;
    }
}

int rvq_reflection_vjp(const float *e, const float *q, const float *g, float *out, int64_t n, int d) {
    const int gamma_code = 0, tangent = 0;
    const float gamma_const = 0.f;
    switch (d) {
    case 1: by_rows(e, q, g, out, n, 1, REFLECTION, 0, 0.f, 0); return 0;
    case 3: by_rows(e, q, g, out, n, 3, REFLECTION, 0, 0.f, 0); return 0;
    case 4: by_rows(e, q, g, out, n, 4, REFLECTION, 0, 0.f, 0); return 0;
        TILES_D(2, REFLECTION) TILES_D(5, REFLECTION) TILES_D(6, REFLECTION) TILES_D(7, REFLECTION)
        TILES_D(8, REFLECTION)
    default: return 1;
    }
}
