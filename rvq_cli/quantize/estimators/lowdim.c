/* The rotation-family and reflection gradients for short rows (D <= 8), as plain C loops that the
 * compiler vectorises across rows: with D a compile-time constant each row's five dot products
 * unroll, and the loop over rows runs 8 or 16 rows per vector instruction. torch.compile does not
 * vectorise reductions this short (kernels.py runs them one row at a time), which is why short rows
 * come here. The formulas, constants and fallbacks are those of kernels.py, in the same order of
 * operations (built with -ffp-contract=off, no fused multiply-adds), so results agree with the torch
 * kernels' to fp32 rounding; native.py builds and calls this file.
 *
 * Every function takes row-major float32 arrays e, q, g, out of n rows of d values and returns 0,
 * or 1 for a d this file has no loop for. */

#include <stdint.h>
#include <math.h>

#define NORM_EPS2 1e-12f        /* NORM_EPS**2: rows with |e| or |q| at or below 1e-6 fall back */
#define ANGLE_EPS 1e-4f         /* 1 +- cos(theta) at or below this: plane or mirror undefined */
#define INV_SQ_DIST_FLOOR 1e-6f /* floor on |q - e|^2 in gamma = 1 / (8 |q - e|^2) */
#define MAXF(a, b) ((a) > (b) ? (a) : (b)) /* clamp_min; fmaxf would block vectorisation */
#define FINITE(x) (((x) - (x)) == 0.f)     /* false for inf and nan */

/* gamma codes, as in kernels.py: 0 |q|/|e|, 1 one, 2 1/(8|q - e|^2), 3 a constant, 4 1/|e| */
static inline __attribute__((always_inline)) void
rotation_rows(const float *restrict e, const float *restrict q, const float *restrict g, float *restrict out,
              int64_t n, const int d, const int gamma_code, const float gamma_const, const int tangent) {
    for (int64_t i = 0; i < n; i++) {
        const float *ei = e + i * d, *qi = q + i * d, *gi = g + i * d;
        float a2 = 0.f, b2 = 0.f, p = 0.f, u = 0.f, v = 0.f;
        for (int k = 0; k < d; k++) a2 += ei[k] * ei[k];
        for (int k = 0; k < d; k++) b2 += qi[k] * qi[k];
        for (int k = 0; k < d; k++) p += ei[k] * qi[k];
        for (int k = 0; k < d; k++) u += ei[k] * gi[k];
        for (int k = 0; k < d; k++) v += qi[k] * gi[k];
        float ia = 1.f / sqrtf(MAXF(a2, NORM_EPS2)); /* 1/|e| */
        float ib = 1.f / sqrtf(MAXF(b2, NORM_EPS2)); /* 1/|q| */
        float opc = 1.f + p * ia * ib;               /* 1 + cos(theta) */
        int ok = (a2 > NORM_EPS2) & (b2 > NORM_EPS2) & (opc > ANGLE_EPS) & FINITE(a2 + b2 + p);
        float t = (u * ia + v * ib) / MAXF(opc, ANGLE_EPS);
        float alpha = (2.f * v * ib - t) * ia;
        float beta = -t * ib;
        float gam;
        if (gamma_code == 0) gam = b2 * ib * ia;
        else if (gamma_code == 1) gam = 1.f;
        else if (gamma_code == 2) gam = 1.f / (8.f * MAXF(a2 + b2 - 2.f * p, INV_SQ_DIST_FLOOR));
        else if (gamma_code == 4) gam = ia;
        else gam = gamma_const;
        if (tangent) alpha = alpha - v * ib * ia;
        float lam = ok ? gam : 1.f;
        alpha = ok ? gam * alpha : 0.f;
        beta = ok ? gam * beta : 0.f;
        for (int k = 0; k < d; k++) out[i * d + k] = lam * gi[k] + alpha * ei[k] + beta * qi[k];
    }
}

static inline __attribute__((always_inline)) void
reflection_rows(const float *restrict e, const float *restrict q, const float *restrict g, float *restrict out,
                int64_t n, const int d) {
    for (int64_t i = 0; i < n; i++) {
        const float *ei = e + i * d, *qi = q + i * d, *gi = g + i * d;
        float a2 = 0.f, b2 = 0.f, p = 0.f, u = 0.f, v = 0.f;
        for (int k = 0; k < d; k++) a2 += ei[k] * ei[k];
        for (int k = 0; k < d; k++) b2 += qi[k] * qi[k];
        for (int k = 0; k < d; k++) p += ei[k] * qi[k];
        for (int k = 0; k < d; k++) u += ei[k] * gi[k];
        for (int k = 0; k < d; k++) v += qi[k] * gi[k];
        int ok = (a2 > NORM_EPS2) & (b2 > NORM_EPS2) & FINITE(a2 + b2 + p);
        float ia = 1.f / sqrtf(MAXF(a2, NORM_EPS2));
        float ib = 1.f / sqrtf(MAXF(b2, NORM_EPS2));
        float omc = 1.f - p * ia * ib; /* 1 - cos(theta) */
        int mirror = ok & (omc > ANGLE_EPS);
        float w = (u * ia - v * ib) / MAXF(omc, ANGLE_EPS);
        float lam = ok ? b2 * ib * ia : 1.f;
        float alpha = mirror ? -lam * w * ia : 0.f;
        float beta = mirror ? lam * w * ib : 0.f;
        for (int k = 0; k < d; k++) out[i * d + k] = lam * gi[k] + alpha * ei[k] + beta * qi[k];
    }
}

/* one loop per (d, gamma, tangent), so that every one of them is a constant inside its loop */
#define ROT_GAMMA(D, GC)                                                                    \
    case GC:                                                                                \
        if (tangent) rotation_rows(e, q, g, out, n, D, GC, gamma_const, 1);                 \
        else rotation_rows(e, q, g, out, n, D, GC, gamma_const, 0);                         \
        return 0;
#define ROT_D(D)                                                                            \
    case D:                                                                                 \
        switch (gamma_code) {                                                               \
            ROT_GAMMA(D, 0) ROT_GAMMA(D, 1) ROT_GAMMA(D, 2) ROT_GAMMA(D, 3) ROT_GAMMA(D, 4) \
        default: return 1;                                                                  \
        }
#define REF_D(D)                                                                            \
    case D: reflection_rows(e, q, g, out, n, D); return 0;

int rvq_rotation_vjp(const float *e, const float *q, const float *g, float *out, int64_t n, int d,
                     int gamma_code, float gamma_const, int tangent) {
    switch (d) {
        ROT_D(1) ROT_D(2) ROT_D(3) ROT_D(4) ROT_D(5) ROT_D(6) ROT_D(7) ROT_D(8)
    default: return 1;
    }
}

int rvq_reflection_vjp(const float *e, const float *q, const float *g, float *out, int64_t n, int d) {
    switch (d) {
        REF_D(1) REF_D(2) REF_D(3) REF_D(4) REF_D(5) REF_D(6) REF_D(7) REF_D(8)
    default: return 1;
    }
}
