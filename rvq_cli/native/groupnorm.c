/* GroupNorm, optionally followed by SiLU, on channels-last (NHWC) maps: forward and backward,
 * fp32 or bf16 activations, fp32 statistics and affine parameters.
 *
 * Why: PyTorch's CPU GroupNorm backward on channels-last maps is 10-20x slower than on contiguous
 * ones, which made channels_last a net loss for the conv models although their convolutions run
 * faster in it (docs/benchmarks.md). Here each sample is three passes over its (HW, C) block (or
 * two forward), every inner loop running over the contiguous channels, which the compiler
 * vectorises; the sample's block is a few hundred kB, so the later passes read it from cache.
 *
 * Layout: x, y, dy, dx are (N, HW, C), C innermost; G groups of C / G consecutive channels; mean
 * and rstd are (N, G); dweight_part and dbias_part are per-sample (N, C) partial sums that the
 * caller adds up. weight and bias may be NULL (no affine). Statistics: two passes (mean, then
 * the centred sum of squares), sums per channel in fp32, per group in double.
 *
 * The inner loops run over one pixel's C channels (restrict pointers, no branches), bf16 rows
 * converted to fp32 first, so that the compiler vectorises every one of them; SiLU's sigmoid uses
 * the exponential below (Cephes' range reduction and polynomial, about 2 ulp in fp32), because
 * libm's expf does not vectorise without -ffast-math.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint16_t bf16;

static void bf16_to_f32(const bf16 *restrict in, float *restrict out, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)in[i] << 16;
        memcpy(out + i, &u, sizeof u);
    }
}

static void f32_to_bf16(const float *restrict in, bf16 *restrict out, int64_t n) {  /* nearest even; NaN stays NaN */
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, in + i, sizeof u);
        uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        out[i] = (bf16)(((u & 0x7fffffffu) > 0x7f800000u) ? ((u >> 16) | 0x40u) : rounded);
    }
}

static inline float exp_approx(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float k = rintf(x * 1.44269504088896341f);
    float r = x - k * 0.693359375f;
    r = r + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* One pixel's row of C channels, as fp32: the row itself (fp32) or its conversion into tmp (bf16). */
static inline const float *row(const void *base, int is_bf16, int64_t offset, int64_t C, float *tmp) {
    if (!is_bf16) return (const float *)base + offset;
    bf16_to_f32((const bf16 *)base + offset, tmp, C);
    return tmp;
}

static inline void store_row(void *base, int is_bf16, int64_t offset, int64_t C, const float *values) {
    if (is_bf16) f32_to_bf16(values, (bf16 *)base + offset, C);
    else memcpy((float *)base + offset, values, sizeof(float) * C);
}

static void add_row(const float *restrict x, float *restrict acc, int64_t C) {
    for (int64_t c = 0; c < C; c++) acc[c] += x[c];
}

static void add_squared_deviation(const float *restrict x, const float *restrict mean, float *restrict acc, int64_t C) {
    for (int64_t c = 0; c < C; c++) {
        float d = x[c] - mean[c];
        acc[c] += d * d;
    }
}

static void affine_row(const float *restrict x, const float *restrict a, const float *restrict s,
                       float *restrict y, int64_t C) {
    for (int64_t c = 0; c < C; c++) y[c] = x[c] * a[c] + s[c];
}

static void affine_silu_row(const float *restrict x, const float *restrict a, const float *restrict s,
                            float *restrict y, int64_t C) {
    for (int64_t c = 0; c < C; c++) {
        float v = x[c] * a[c] + s[c];
        y[c] = v / (1.0f + exp_approx(-v));
    }
}

/* dz = dy * SiLU'(v), v = a x + s (the GroupNorm output, recomputed) */
static void silu_grad_row(const float *restrict x, const float *restrict dy, const float *restrict a,
                          const float *restrict s, float *restrict dz, int64_t C) {
    for (int64_t c = 0; c < C; c++) {
        float v = x[c] * a[c] + s[c];
        float sg = 1.0f / (1.0f + exp_approx(-v));
        dz[c] = dy[c] * (sg * (1.0f + v * (1.0f - sg)));
    }
}

static void add_grad_sums(const float *restrict x, const float *restrict dz, float *restrict sdz,
                          float *restrict sdzx, int64_t C) {
    for (int64_t c = 0; c < C; c++) {
        sdz[c] += dz[c];
        sdzx[c] += dz[c] * x[c];
    }
}

static void input_grad_row(const float *restrict x, const float *restrict dz, const float *restrict k1,
                           const float *restrict k2, const float *restrict k3, float *restrict dx, int64_t C) {
    for (int64_t c = 0; c < C; c++) dx[c] = k1[c] * dz[c] + k2[c] * x[c] + k3[c];
}

/* per channel: a = rstd * weight, s = bias - mean * a (the group's statistics) */
static void affine_terms(const float *weight, const float *bias, const float *mean, const float *rstd,
                         int64_t C, int64_t cg, float *a, float *s) {
    for (int64_t c = 0; c < C; c++) {
        a[c] = rstd[c / cg] * (weight ? weight[c] : 1.0f);
        s[c] = (bias ? bias[c] : 0.0f) - mean[c / cg] * a[c];
    }
}

static double group_sum(const float *v, int64_t g, int64_t cg) {
    double t = 0.0;
    for (int64_t c = g * cg; c < (g + 1) * cg; c++) t += v[c];
    return t;
}

/* one sample's forward: mean, rstd (G each) and y */
static void forward_sample(const void *x, const float *weight, const float *bias, void *y, float *m, float *r,
                           int64_t base, int64_t HW, int64_t C, int64_t G, float eps, int silu, int is_bf16,
                           float *buf) {
    float *acc = buf, *a = buf + C, *s = buf + 2 * C, *tmp = buf + 3 * C, *out = buf + 4 * C;
    int64_t cg = C / G;
    double count = (double)HW * (double)cg;
    memset(acc, 0, sizeof(float) * C);
    for (int64_t p = 0; p < HW; p++) add_row(row(x, is_bf16, base + p * C, C, tmp), acc, C);
    for (int64_t g = 0; g < G; g++) m[g] = (float)(group_sum(acc, g, cg) / count);
    for (int64_t c = 0; c < C; c++) a[c] = m[c / cg];
    memset(acc, 0, sizeof(float) * C);
    for (int64_t p = 0; p < HW; p++) add_squared_deviation(row(x, is_bf16, base + p * C, C, tmp), a, acc, C);
    for (int64_t g = 0; g < G; g++) r[g] = (float)(1.0 / sqrt(group_sum(acc, g, cg) / count + (double)eps));
    affine_terms(weight, bias, m, r, C, cg, a, s);
    for (int64_t p = 0; p < HW; p++) {
        const float *xr = row(x, is_bf16, base + p * C, C, tmp);
        if (silu) affine_silu_row(xr, a, s, out, C);
        else affine_row(xr, a, s, out, C);
        store_row(y, is_bf16, base + p * C, C, out);
    }
}

/* one sample's backward: dx and the sample's partial dweight, dbias (C each, may be NULL);
 * dz_all (HW × C, used only with a SiLU) keeps dz between the two passes */
static void backward_sample(const void *x, const void *dy, const float *weight, const float *bias, const float *m,
                            const float *r, void *dx, float *dw, float *db, int64_t base, int64_t HW, int64_t C,
                            int64_t G, int silu, int is_bf16, float *buf, float *dz_all) {
    float *a = buf, *s = buf + C, *sdz = buf + 2 * C, *sdzx = buf + 3 * C, *k1 = buf + 4 * C, *k2 = buf + 5 * C;
    float *k3 = buf + 6 * C, *xt = buf + 7 * C, *gt = buf + 8 * C, *out = buf + 9 * C;
    int64_t cg = C / G;
    double count = (double)HW * (double)cg;
    affine_terms(weight, bias, m, r, C, cg, a, s);
    memset(sdz, 0, sizeof(float) * 2 * C);  /* sdz and sdzx */
    for (int64_t p = 0; p < HW; p++) {
        const float *xr = row(x, is_bf16, base + p * C, C, xt), *gr = row(dy, is_bf16, base + p * C, C, gt);
        if (silu) {
            silu_grad_row(xr, gr, a, s, dz_all + p * C, C);
            gr = dz_all + p * C;
        }
        add_grad_sums(xr, gr, sdz, sdzx, C);
    }
    for (int64_t g = 0; g < G; g++) {
        double s1 = 0.0, s2 = 0.0, mg = m[g], rg = r[g];
        for (int64_t c = g * cg; c < (g + 1) * cg; c++) {
            double w = weight ? weight[c] : 1.0;
            s1 += w * sdz[c];
            s2 += w * sdzx[c];
            if (dw) dw[c] = (float)((sdzx[c] - mg * sdz[c]) * rg);
            if (db) db[c] = sdz[c];
        }
        double c2 = (s1 * mg - s2) * rg * rg * rg / count, c3 = -c2 * mg - s1 * rg / count;
        for (int64_t c = g * cg; c < (g + 1) * cg; c++) {
            k1[c] = (float)(rg * (weight ? weight[c] : 1.0));
            k2[c] = (float)c2;
            k3[c] = (float)c3;
        }
    }
    for (int64_t p = 0; p < HW; p++) {
        const float *xr = row(x, is_bf16, base + p * C, C, xt);
        const float *gr = silu ? dz_all + p * C : row(dy, is_bf16, base + p * C, C, gt);
        input_grad_row(xr, gr, k1, k2, k3, out, C);
        store_row(dx, is_bf16, base + p * C, C, out);
    }
}

/* The arguments of one call, for the per-sample work below. */
struct call {
    const void *x, *dy;
    const float *weight, *bias;
    void *out;                     /* y (forward) or dx (backward) */
    float *mean, *rstd, *dweight_part, *dbias_part;
    int64_t HW, C, G;
    float eps;
    int silu, is_bf16;
};

static void forward_one(const struct call *a, int64_t n, float *scratch) {
    forward_sample(a->x, a->weight, a->bias, a->out, a->mean + n * a->G, a->rstd + n * a->G, n * a->HW * a->C, a->HW,
                   a->C, a->G, a->eps, a->silu, a->is_bf16, scratch);
}

static void backward_one(const struct call *a, int64_t n, float *scratch) {
    backward_sample(a->x, a->dy, a->weight, a->bias, a->mean + n * a->G, a->rstd + n * a->G, a->out,
                    a->dweight_part ? a->dweight_part + n * a->C : NULL, a->dbias_part ? a->dbias_part + n * a->C : NULL,
                    n * a->HW * a->C, a->HW, a->C, a->G, a->silu, a->is_bf16, scratch, scratch + 10 * a->C);
}

/* fn for every sample, in parallel on up to `threads` OpenMP threads, each with `scratch_floats`
 * of scratch: the runtime torch itself uses (the library links libgomp.so.1, which resolves to
 * torch's copy already in the process), whose workers are awake after torch's own parallel
 * regions, where a thread of our own would have to compete with them for the cores. Returns 0,
 * or 2 when out of memory. */
static int for_each_sample(void (*fn)(const struct call *, int64_t, float *), const struct call *a, int64_t N,
                           size_t scratch_floats, int threads) {
    int failed = 0;
    (void)threads;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1 && N > 1 && N * a->HW * a->C >= 32768)
#endif
    {
        float *scratch = malloc(sizeof(float) * scratch_floats);
        if (!scratch) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            failed = 1;
        }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t n = 0; n < N; n++)
            if (scratch) fn(a, n, scratch);
        free(scratch);
    }
    return failed ? 2 : 0;
}

/* Both return 0, 1 for channels not divisible into groups, 2 when out of memory. */
int rvq_groupnorm_fwd(const void *x, const float *weight, const float *bias, void *y, float *mean, float *rstd,
                      int64_t N, int64_t HW, int64_t C, int64_t G, float eps, int silu, int is_bf16, int threads) {
    if (G < 1 || C % G) return 1;
    struct call a = {x, NULL, weight, bias, y, mean, rstd, NULL, NULL, HW, C, G, eps, silu, is_bf16};
    return for_each_sample(forward_one, &a, N, (size_t)(5 * C), threads);
}

int rvq_groupnorm_bwd(const void *x, const void *dy, const float *weight, const float *bias, const float *mean,
                      const float *rstd, void *dx, float *dweight_part, float *dbias_part, int64_t N, int64_t HW,
                      int64_t C, int64_t G, int silu, int is_bf16, int threads) {
    if (G < 1 || C % G) return 1;
    struct call a = {x, dy, weight, bias, dx, (float *)mean, (float *)rstd, dweight_part, dbias_part, HW, C, G, 0.0f,
                     silu, is_bf16};
    /* with SiLU the scratch also keeps the sample's dz (HW × C) between the two passes */
    return for_each_sample(backward_one, &a, N, (size_t)(10 * C + (silu ? HW * C : 0)), threads);
}
