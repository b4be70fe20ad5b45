/* SparseAdamW's CPU kernel: AdamW on the selected elements of many tensors, in one pass.
 *
 * Compiled on first use by fishertune/optim/sparse_adamw_kernel.py and called through ctypes.
 * For each selected element (flat index i, position k in the compact state) it repeats
 * torch.optim.AdamW's single-tensor update operation for operation, with torch's roundings:
 *
 *   step[k] += 1
 *   m = lerp(m, g[i], 1 - beta1)          one fused multiply-add, as torch's vectorised lerp
 *   v = v * beta2 + (1 - beta2) g[i] g[i]  the addcmul as one fused multiply-add, as torch's
 *   r = sqrt(v)                            torch's own square root (a function the caller
 *                                          passes: MKL's, or the correctly rounded one)
 *   p[i] = p[i] * (1 - lr wd)              when wd != 0
 *   p[i] = p[i] + (-lr / (1 - beta1^step)) m / (r / sqrt(1 - beta2^step) + eps)
 *
 * with both bias corrections read from tables indexed by the element's step. The gradient is
 * read and the parameter read-modified-written only at the selected indices, once each. The
 * elements go through in chunks: gathered into a buffer on the stack, updated in loops without
 * indirection (which the compiler vectorises), scattered back. While a chunk is gathered, the
 * cache lines the next chunk will read and write are requested into L2 (software prefetch):
 * the hardware prefetcher does not follow the irregular gather by itself. The file is
 * compiled with -ffp-contract=off, so only the explicit fma calls fuse.
 */
#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    void *param;          /* contiguous, dtype of the kernel */
    const void *grad;     /* contiguous, same shape */
    void *exp_avg;        /* one per selected element */
    void *exp_avg_sq;     /* one per selected element */
    int32_t *step;        /* one per selected element */
    const int32_t *index; /* sorted flat indices of the selected elements */
    int64_t count;        /* number of selected elements */
} sparse_tensor;

/* r[0:n] = sqrt(a[0:n]), e.g. MKL's vsSqrt_64 / vdSqrt_64 or the functions below. */
typedef void (*root_function)(int64_t n, const void *a, void *r);

void correctly_rounded_sqrt_f32(int64_t n, const void *a, void *r) {
    for (int64_t i = 0; i < n; i++) ((float *)r)[i] = sqrtf(((const float *)a)[i]);
}

void correctly_rounded_sqrt_f64(int64_t n, const void *a, void *r) {
    for (int64_t i = 0; i < n; i++) ((double *)r)[i] = sqrt(((const double *)a)[i]);
}

typedef struct {
    double one_minus_beta1, beta2, one_minus_beta2, decay, eps;
    int apply_decay;
    int uniform;               /* every element has the same step: the tables are read once */
    const void *neg_step_size; /* -lr / (1 - beta1^k), table over k, kernel dtype */
    const void *bias2_sqrt;    /* sqrt(1 - beta2^k), table over k, kernel dtype */
    root_function root_of;
} hyper;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MULTIVERSIONED __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MULTIVERSIONED
#endif

/* Elements per chunk: 16 KiB per buffer (4096 float32, 2048 float64), 48 KiB of stack per
 * thread; the lines of the next chunk (at 5% density ~650 KiB of gradient and parameter)
 * fit in a 1 MiB L2 cache. */
#define CHUNK_BYTES 16384
#define LINE_BYTES 64

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH_TO_L2(address, for_write) __builtin_prefetch((address), (for_write), 1)
#else
#define PREFETCH_TO_L2(address, for_write) ((void)(address))
#endif

#define DEFINE_UPDATE(T, FMA, SUFFIX)                                                         \
    MULTIVERSIONED static void update_##SUFFIX(const sparse_tensor *t, int64_t a, int64_t b,  \
                                               const hyper *h) {                              \
        const T *g = (const T *)t->grad;                                                      \
        T *p = (T *)t->param, *m = (T *)t->exp_avg, *v = (T *)t->exp_avg_sq;                  \
        const T w1 = (T)h->one_minus_beta1, beta2 = (T)h->beta2, c2 = (T)h->one_minus_beta2;  \
        const T decay = (T)h->decay, eps = (T)h->eps;                                         \
        const T *neg_step = (const T *)h->neg_step_size, *bias2 = (const T *)h->bias2_sqrt;   \
        /* torch's lerp: small weights w: m + w (g - m); others: g + (w - 1)(g - m) */        \
        const int small = fabs((double)w1) < 0.5;                                             \
        const T coefficient = small ? w1 : w1 - (T)1;                                         \
        enum { CHUNK = CHUNK_BYTES / sizeof(T), PER_LINE = LINE_BYTES / sizeof(T) };          \
        T gathered[CHUNK], root[CHUNK], delta[CHUNK];                                         \
        for (int64_t c = a; c < b; c += CHUNK) {                                              \
            const int n = b - c < CHUNK ? (int)(b - c) : CHUNK;                               \
            const int32_t *ic = t->index + c;                                                 \
            int32_t *sc = t->step + c;                                                        \
            T *mc = m + c, *vc = v + c;                                                       \
            /* the next chunk's first index per line (by index; alignment only costs speed) */ \
            const int64_t next = b - c - CHUNK; /* its length, if positive */                 \
            const int32_t *in = t->index + (next > 0 ? c + CHUNK : b);                        \
            for (int j = 0; j < n; j++) {                                                     \
                gathered[j] = g[ic[j]];                                                       \
                if (j < next && (j == 0 || in[j] / PER_LINE != in[j - 1] / PER_LINE)) {       \
                    PREFETCH_TO_L2(g + in[j], 0);                                             \
                    PREFETCH_TO_L2(p + in[j], 1);                                             \
                }                                                                             \
            }                                                                                 \
            for (int j = 0; j < n; j++) sc[j] += 1;                                           \
            if (small)                                                                        \
                for (int j = 0; j < n; j++)                                                   \
                    mc[j] = FMA(coefficient, gathered[j] - mc[j], mc[j]);                     \
            else                                                                              \
                for (int j = 0; j < n; j++)                                                   \
                    mc[j] = FMA(coefficient, gathered[j] - mc[j], gathered[j]);               \
            for (int j = 0; j < n; j++)                                                       \
                vc[j] = FMA(c2 * gathered[j], gathered[j], vc[j] * beta2);                    \
            h->root_of(n, vc, root);                                                          \
            if (h->uniform) {                                                                 \
                const T ns = neg_step[sc[0]], b2 = bias2[sc[0]];                              \
                for (int j = 0; j < n; j++) delta[j] = (ns * mc[j]) / (root[j] / b2 + eps);   \
            } else {                                                                          \
                for (int j = 0; j < n; j++)                                                   \
                    delta[j] = (neg_step[sc[j]] * mc[j]) / (root[j] / bias2[sc[j]] + eps);    \
            }                                                                                 \
            if (h->apply_decay)                                                               \
                for (int j = 0; j < n; j++) p[ic[j]] = p[ic[j]] * decay + delta[j];           \
            else                                                                              \
                for (int j = 0; j < n; j++) p[ic[j]] = p[ic[j]] + delta[j];                   \
        }                                                                                     \
    }

DEFINE_UPDATE(float, fmaf, f32)
DEFINE_UPDATE(double, fma, f64)

/* The update of all tensors, their selected elements split evenly over up to `threads`
 * OpenMP threads (torch's own pool when torch's libgomp is the one loaded). Scalars arrive as
 * doubles and are rounded to the kernel's dtype, as torch rounds a Python float that meets a
 * tensor. */
void sparse_adamw_update(const sparse_tensor *tensors, int64_t n_tensors, int is_double,
                         double one_minus_beta1, double beta2, double one_minus_beta2,
                         const void *neg_step_size, const void *bias2_sqrt, double decay,
                         int apply_decay, double eps, int uniform, root_function root_of,
                         int threads) {
    const hyper h = {one_minus_beta1, beta2,   one_minus_beta2, decay,     eps,
                     apply_decay,     uniform, neg_step_size,   bias2_sqrt, root_of};
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
        const int64_t begin = total * j / used, end = total * (j + 1) / used;
        int64_t offset = 0;
        for (int64_t i = 0; i < n_tensors && offset < end; i++) {
            const sparse_tensor *t = &tensors[i];
            const int64_t a = begin > offset ? begin - offset : 0;
            const int64_t b = end - offset < t->count ? end - offset : t->count;
            offset += t->count;
            if (a >= b) continue;
            if (is_double)
                update_f64(t, a, b, &h);
            else
                update_f32(t, a, b, &h);
        }
    }
}
