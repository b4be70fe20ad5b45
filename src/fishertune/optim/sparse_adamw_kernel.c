/* SparseAdamW's CPU kernel: AdamW on the selected elements of many tensors, in two passes.
 *
 * Compiled on first use by fishertune/optim/sparse_adamw_kernel.py and called through ctypes.
 * The update repeats torch.optim.AdamW's single-tensor path operation for operation, with
 * torch's own roundings (see docs/performance.md):
 *
 *   pass 1 (moments):  step += 1
 *                      m = lerp(m, g, 1 - beta1)       fused multiply-add, as torch's lerp
 *                      v = v * beta2 + (1 - beta2) g g  the addcmul as one fused multiply-add
 *   between the passes the caller computes sqrt(v) with torch (its sqrt need not be the
 *   correctly rounded one, and it is elementwise, so computing it on the compact state gives
 *   the dense result);
 *   pass 2 (apply):    p = p * (1 - lr wd)              when wd != 0
 *                      d = sqrt(v) / sqrt(1 - beta2^step) + eps
 *                      p = p + (-lr / (1 - beta1^step)) m / d
 *
 * with the two bias corrections read per element from tables indexed by the element's step.
 * Each pass reads the parameter or the gradient only at the selected flat indices, so the
 * random access is one gradient read and one parameter read-modify-write per element. The
 * file is compiled with -ffp-contract=off: only the explicit fma calls fuse.
 */
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdint.h>

typedef struct {
    void *param;          /* contiguous, dtype of the kernel */
    const void *grad;     /* contiguous, same shape */
    void *exp_avg;        /* one per selected element */
    void *exp_avg_sq;     /* one per selected element */
    void *root;           /* sqrt(exp_avg_sq), written by the caller between the passes */
    int32_t *step;        /* one per selected element */
    const int32_t *index; /* sorted flat indices of the selected elements */
    int64_t count;        /* number of selected elements */
} sparse_tensor;

typedef struct {
    const sparse_tensor *tensors;
    int64_t n_tensors;
    int64_t begin; /* position in the concatenation of all tensors' selected elements */
    int64_t end;
    int pass;
    double one_minus_beta1, beta2, one_minus_beta2, decay, eps;
    int apply_decay;
    const void *neg_step_size; /* -lr / (1 - beta1^k), table over k, kernel dtype */
    const void *bias2_sqrt;    /* sqrt(1 - beta2^k), table over k, kernel dtype */
    int is_double;
    int uniform; /* every element has the same step: the tables are read once */
} work;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MULTIVERSIONED __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MULTIVERSIONED
#endif

/* Elements per chunk: each pass gathers (or scatters) a chunk through a buffer on the stack
 * and does the arithmetic in a loop without indirection, which the compiler vectorises. */
#define CHUNK 512

#define DEFINE_PASSES(T, FMA, SUFFIX)                                                         \
    MULTIVERSIONED static void moments_##SUFFIX(const sparse_tensor *t, int64_t a, int64_t b, \
                                                T w1, T beta2, T c2) {                        \
        const T *g = (const T *)t->grad;                                                      \
        T *m = (T *)t->exp_avg, *v = (T *)t->exp_avg_sq;                                      \
        const int32_t *idx = t->index;                                                        \
        const int small = fabs((double)w1) < 0.5;                                             \
        const T coefficient = small ? w1 : w1 - (T)1;                                         \
        T gathered[CHUNK];                                                                    \
        for (int64_t c = a; c < b; c += CHUNK) {                                              \
            const int n = b - c < CHUNK ? (int)(b - c) : CHUNK;                               \
            for (int j = 0; j < n; j++) gathered[j] = g[idx[c + j]];                          \
            T *mc = m + c, *vc = v + c;                                                       \
            int32_t *sc = t->step + c;                                                        \
            for (int j = 0; j < n; j++) sc[j] += 1;                                           \
            if (small)                                                                        \
                for (int j = 0; j < n; j++)                                                   \
                    mc[j] = FMA(coefficient, gathered[j] - mc[j], mc[j]);                     \
            else                                                                              \
                for (int j = 0; j < n; j++)                                                   \
                    mc[j] = FMA(coefficient, gathered[j] - mc[j], gathered[j]);               \
            for (int j = 0; j < n; j++)                                                       \
                vc[j] = FMA(c2 * gathered[j], gathered[j], vc[j] * beta2);                    \
        }                                                                                     \
    }                                                                                         \
    MULTIVERSIONED static void apply_##SUFFIX(const sparse_tensor *t, int64_t a, int64_t b,   \
                                              const T *neg_step, const T *bias2, T decay,     \
                                              int apply_decay, T eps, int uniform) {          \
        T *p = (T *)t->param;                                                                 \
        const T *m = (const T *)t->exp_avg, *r = (const T *)t->root;                          \
        const int32_t *idx = t->index;                                                        \
        const int32_t *s = t->step;                                                           \
        T delta[CHUNK];                                                                       \
        for (int64_t c = a; c < b; c += CHUNK) {                                              \
            const int n = b - c < CHUNK ? (int)(b - c) : CHUNK;                               \
            const int32_t *sc = s + c;                                                        \
            const T *mc = m + c, *rc = r + c;                                                 \
            if (uniform) {                                                                    \
                const T ns = neg_step[sc[0]], b2 = bias2[sc[0]];                              \
                for (int j = 0; j < n; j++) delta[j] = (ns * mc[j]) / (rc[j] / b2 + eps);     \
            } else {                                                                          \
                for (int j = 0; j < n; j++)                                                   \
                    delta[j] = (neg_step[sc[j]] * mc[j]) / (rc[j] / bias2[sc[j]] + eps);      \
            }                                                                                 \
            const int32_t *ic = idx + c;                                                      \
            if (apply_decay)                                                                  \
                for (int j = 0; j < n; j++) p[ic[j]] = p[ic[j]] * decay + delta[j];           \
            else                                                                              \
                for (int j = 0; j < n; j++) p[ic[j]] = p[ic[j]] + delta[j];                   \
        }                                                                                     \
    }

DEFINE_PASSES(float, fmaf, f32)
DEFINE_PASSES(double, fma, f64)

/* Run one pass over the positions [begin, end) of the concatenated selections. */
static void run(const work *w) {
    int64_t offset = 0;
    for (int64_t i = 0; i < w->n_tensors && offset < w->end; i++) {
        const sparse_tensor *t = &w->tensors[i];
        const int64_t a = w->begin > offset ? w->begin - offset : 0;
        const int64_t b = w->end - offset < t->count ? w->end - offset : t->count;
        offset += t->count;
        if (a >= b) continue;
        if (w->is_double) {
            if (w->pass == 1)
                moments_f64(t, a, b, w->one_minus_beta1, w->beta2, w->one_minus_beta2);
            else
                apply_f64(t, a, b, (const double *)w->neg_step_size,
                          (const double *)w->bias2_sqrt, w->decay, w->apply_decay, w->eps, w->uniform);
        } else {
            if (w->pass == 1)
                moments_f32(t, a, b, (float)w->one_minus_beta1, (float)w->beta2,
                            (float)w->one_minus_beta2);
            else
                apply_f32(t, a, b, (const float *)w->neg_step_size,
                          (const float *)w->bias2_sqrt, (float)w->decay, w->apply_decay,
                          (float)w->eps, w->uniform);
        }
    }
}

/* One pass over all tensors, the elements split evenly over up to `threads` OpenMP threads
 * (torch's own pool when torch's libgomp is the one loaded). Scalars arrive as doubles and
 * are rounded to the kernel's dtype, as torch rounds a Python float that meets a tensor. */
void sparse_adamw_pass(const sparse_tensor *tensors, int64_t n_tensors, int pass, int is_double,
                       double one_minus_beta1, double beta2, double one_minus_beta2,
                       const void *neg_step_size, const void *bias2_sqrt, double decay,
                       int apply_decay, double eps, int uniform, int threads) {
    int64_t total = 0;
    for (int64_t i = 0; i < n_tensors; i++) total += tensors[i].count;
    if (threads < 1) threads = 1;
    if ((int64_t)threads > total / 4096 + 1) threads = (int)(total / 4096 + 1);
#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        const int j = omp_get_thread_num(), used = omp_get_num_threads();
#else
        const int j = 0, used = 1;
#endif
        work w = {tensors,      n_tensors,  total * j / used, total * (j + 1) / used,
                  pass,         one_minus_beta1, beta2,       one_minus_beta2,
                  decay,        eps,        apply_decay,      neg_step_size,
                  bias2_sqrt,   is_double,  uniform};
        run(&w);
    }
}
