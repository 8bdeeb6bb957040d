/* CPU kernels for labkit.fastops, compiled on first use by labkit/native.py (gcc or clang, OpenMP).
 *
 * Every map is float32 and channels_last: (N, H, W, C), channels innermost, so the loops over
 * channels are the ones the compiler vectorises. Each kernel works image by image, in parallel over
 * images; an image's working set (a few hundred KB at most for the lab) stays in the core's cache.
 * The Python side checks shapes, layouts and dtypes before it calls in; nothing here allocates
 * tensors or raises.
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))

/* ------------------------------------------------------------------ the image's block + max-pool
 * z: (N, H, W) = relu(group_norm(image)), one channel. wt: (K, C), the convolution weight with the
 * taps first (K = kh * kw). The convolution has stride 1 and zero padding (ph, pw): its output is
 * (N, Hc, Wc, C), never stored whole; each image's is pooled at once into out (N, Hp, Wp, C), and
 * idx (N, Hp, Wp, C) gets, per pooled value, the place of its maximum in the pool's window: the
 * first in scan order, NaN winning, as ATen's max-pool picks it. */
typedef struct {
    int n, h, w, c, kh, kw, ph, pw;             /* input and convolution */
    int hc, wc;                                  /* convolution output */
    int pkh, pkw, psh, psw, pph, ppw, pdh, pdw;  /* pool kernel, stride, padding, dilation */
    int hp, wp;                                  /* pool output */
} Geometry;

/* Channels per block: one vector register (AVX-512: 16 floats, AVX: 8, else 4), so the compiler never
 * has to split a vector wider than the CPU's. C must be a multiple (the Python side asks for 16). */
#if defined(__AVX512F__)
#define BC 16
#define STRIP 4
#elif defined(__AVX__)
#define BC 8
#define STRIP 8
#else
#define BC 4
#define STRIP 8
#endif
typedef float vf __attribute__((vector_size(BC * 4)));
typedef int vi __attribute__((vector_size(BC * 4)));
typedef unsigned char vu8 __attribute__((vector_size(BC)));
INLINE vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
INLINE void store(float *p, vf v) { memcpy(p, &v, sizeof v); }

/* The convolution of one image, channels c0..c0+BC, into conv (Hc, Wc, C), from the image zero-padded
 * into zp (Hc + kh - 1, Wc + kw - 1). STRIP output pixels at a time: that many independent sums keep
 * the FMA units busy where one would wait on each previous result. */
INLINE void conv_image(const Geometry *g, const float *zp, const float *wt, const float *bias, float *conv, int c0) {
    const int C = g->c, wpad = g->wc + g->kw - 1;
    const vf start = bias ? load(bias + c0) : (vf){0};
    for (int hc = 0; hc < g->hc; hc++) {
        int wc = 0;
        for (; wc + STRIP <= g->wc; wc += STRIP) {
            vf a[STRIP];
            for (int r = 0; r < STRIP; r++) a[r] = start;
            for (int i = 0; i < g->kh; i++) {
                const float *row = zp + (hc + i) * wpad + wc;
                for (int j = 0; j < g->kw; j++) {
                    vf w = load(wt + (i * g->kw + j) * C + c0);
                    for (int r = 0; r < STRIP; r++) a[r] += row[j + r] * w;
                }
            }
            for (int r = 0; r < STRIP; r++) store(conv + (hc * g->wc + wc + r) * C + c0, a[r]);
        }
        for (; wc < g->wc; wc++) {
            vf a0 = start;
            for (int i = 0; i < g->kh; i++)
                for (int j = 0; j < g->kw; j++) a0 += zp[(hc + i) * wpad + wc + j] * load(wt + (i * g->kw + j) * C + c0);
            store(conv + (hc * g->wc + wc) * C + c0, a0);
        }
    }
}

/* One image's M maps into the middle of padded, whose borders stay zero. */
INLINE void pad_maps(const Geometry *g, int m, const float *maps, int n, float *padded) {
    const int hpad = g->h + 2 * g->ph, wpad = g->w + 2 * g->pw;
    for (int q = 0; q < m; q++) {
        const float *map = maps + ((long)q * g->n + n) * g->h * g->w;
        float *pq = padded + q * hpad * wpad;
        for (int hh = 0; hh < g->h; hh++) memcpy(pq + (hh + g->ph) * wpad + g->pw, map + hh * g->w, sizeof(float) * g->w);
    }
}

/* A pool window's step: v (element e of the window) becomes the maximum where it is larger or NaN, as
 * ATen's max-pool decides (so the first of equal maxima stays, and a later NaN wins). */
INLINE void take_max(vf v, int e, vf *best, vi *at) {
    vi take = (v > *best) | (v != v);  /* -1 where v is larger or NaN */
    *best = (vf)((take & (vi)v) | (~take & (vi)*best));
    *at = (take & e) | (~take & *at);
}

/* A pooled vector and its maxima's places (one byte each) at offset o. */
INLINE void store_max(float *out, unsigned char *idx, long o, vf best, vi at) {
    store(out + o, best);
    vu8 bytes = __builtin_convertvector(at, vu8);
    memcpy(idx + o, &bytes, sizeof bytes);
}

/* Max-pool one image's convolution output, channels c0..c0+BC. idx gets the maximum's place in its
 * window, i * pkw + j for the window's element (i, j) (one byte: the Python side checks that the
 * window has at most 256 elements); window_positions turns it back into a pixel. */
INLINE void pool_image(const Geometry *g, const float *conv, float *out, unsigned char *idx, int c0) {
    const int C = g->c;
    for (int oh = 0; oh < g->hp; oh++)
        for (int ow = 0; ow < g->wp; ow++) {
            const int hs = oh * g->psh - g->pph, ws = ow * g->psw - g->ppw;
            int h0 = hs, w0 = ws;
            int h1 = hs + (g->pkh - 1) * g->pdh + 1, w1 = ws + (g->pkw - 1) * g->pdw + 1;
            if (h1 > g->hc) h1 = g->hc;
            if (w1 > g->wc) w1 = g->wc;
            while (h0 < 0) h0 += g->pdh;
            while (w0 < 0) w0 += g->pdw;
            const int i0 = (h0 - hs) / g->pdh, j0 = (w0 - ws) / g->pdw;  /* the first element inside */
            vf best = (vf){0} - INFINITY;
            vi at = (vi){0} + (i0 * g->pkw + j0);
            for (int hh = h0, i = i0; hh < h1; hh += g->pdh, i++)
                for (int ww = w0, e = i * g->pkw + j0; ww < w1; ww += g->pdw, e++)
                    take_max(load(conv + (hh * g->wc + ww) * C + c0), e, &best, &at);
            store_max(out, idx, (long)(oh * g->wp + ow) * C + c0, best, at);
        }
}

/* The same for the lab's pool, 3x3 with stride S, no padding, no dilation, every window inside the map:
 * the window's nine places are constants, so the loops unroll and no edge is checked. */
INLINE void pool_image_3x3(const Geometry *g, const float *conv, float *out, unsigned char *idx, int c0, const int S) {
    const int C = g->c;
    for (int oh = 0; oh < g->hp; oh++)
        for (int ow = 0; ow < g->wp; ow++) {
            const float *win = conv + ((oh * S) * g->wc + ow * S) * C + c0;
            vf best = load(win);
            vi at = (vi){0};
            for (int e = 1; e < 9; e++) take_max(load(win + ((e / 3) * g->wc + e % 3) * C), e, &best, &at);
            store_max(out, idx, (long)(oh * g->wp + ow) * C + c0, best, at);
        }
}

/* Whether g's pool is one pool_image_3x3 takes. */
static int is_plain_3x3(const Geometry *g) {
    return g->pkh == 3 && g->pkw == 3 && g->psh == g->psw && g->pph == 0 && g->ppw == 0 && g->pdh == 1 && g->pdw == 1
           && (g->hp - 1) * g->psh + 3 <= g->hc && (g->wp - 1) * g->psw + 3 <= g->wc;
}

/* Max-pool one image's (Hc, Wc, C) map, every channel block, the unrolled way where plain3x3. */
INLINE void pool_channels(const Geometry *g, int plain3x3, const float *map, float *out, unsigned char *idx) {
    for (int c0 = 0; c0 < g->c; c0 += BC) {
        if (plain3x3)
            pool_image_3x3(g, map, out, idx, c0, g->psh);
        else
            pool_image(g, map, out, idx, c0);
    }
}

/* positions (Hp * Wp, pkh * pkw): the convolution pixel of each pooled value's window elements. */
static void window_positions(const Geometry *g, int *positions) {
    const int kk = g->pkh * g->pkw;
    for (int oh = 0; oh < g->hp; oh++)
        for (int ow = 0; ow < g->wp; ow++)
            for (int i = 0; i < g->pkh; i++)
                for (int j = 0; j < g->pkw; j++) {
                    int hh = oh * g->psh - g->pph + i * g->pdh, ww = ow * g->psw - g->ppw + j * g->pdw;
                    positions[(oh * g->wp + ow) * kk + i * g->pkw + j] = hh * g->wc + ww;
                }
}

void block_pool_forward(const Geometry *g, const float *z, const float *wt, const float *bias, float *out,
                        unsigned char *idx,
                        int threads) {
    const int plain3x3 = is_plain_3x3(g);
#pragma omp parallel num_threads(threads)
    {
        float *conv = malloc(sizeof(float) * g->hc * g->wc * g->c);
        float *zp = calloc((size_t)(g->hc + g->kh - 1) * (g->wc + g->kw - 1), sizeof(float));
#pragma omp for schedule(static)
        for (int n = 0; n < g->n; n++) {
            long o = (long)n * g->hp * g->wp * g->c;
            pad_maps(g, 1, z, n, zp);
            for (int c0 = 0; c0 < g->c; c0 += BC) conv_image(g, zp, wt, bias, conv, c0);
            pool_channels(g, plain3x3, conv, out + o, idx + o);
        }
        free(conv);
        free(zp);
    }
}

/* A max-pool alone (the lab's second one): x (N, Hc, Wc, C) -> out and idx (N, Hp, Wp, C), as the image's
 * block pools its convolution (only the pool fields, hc, wc, c, hp and wp of g are read). */
void max_pool_forward(const Geometry *g, const float *x, float *out, unsigned char *idx, int threads) {
    const int plain3x3 = is_plain_3x3(g);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int n = 0; n < g->n; n++) {
        const float *xi = x + (long)n * g->hc * g->wc * g->c;
        const long o = (long)n * g->hp * g->wp * g->c;
        pool_channels(g, plain3x3, xi, out + o, idx + o);
    }
}

/* Its backward pass: grad_x (N, Hc, Wc, C) = each pooled gradient added onto its maximum's pixel, the
 * pooled values in order (as ATen adds them where windows share a maximum); per image, so the zeroed
 * gradient is still in the cache when the sums land in it. */
void max_pool_backward(const Geometry *g, const float *grad, const unsigned char *idx, float *grad_x, int threads) {
    const int C = g->c, kk = g->pkh * g->pkw, npool = g->hp * g->wp;
    int *positions = malloc(sizeof(int) * npool * kk);
    window_positions(g, positions);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int n = 0; n < g->n; n++) {
        float *gx = grad_x + (long)n * g->hc * g->wc * C;
        const float *gr = grad + (long)n * npool * C;
        const unsigned char *ix = idx + (long)n * npool * C;
        memset(gx, 0, sizeof(float) * g->hc * g->wc * C);
        for (int o = 0; o < npool; o++)
            for (int c = 0; c < C; c++) gx[(long)positions[o * kk + ix[o * C + c]] * C + c] += gr[o * C + c];
    }
    free(positions);
}

/* One image's share of the products. The pooled gradient is first summed onto the convolution pixels
 * where the maxima lie (gsum (Hc * Wc, C); about 40 % of the pixels for MNIST, listed in order in
 * list), then for each map and channel block, over the listed pixels,
 * acc_t (M * K, C) += patch value * gsum row: a broadcast times a vector, the K sums in registers. */
INLINE void accumulate_image(const Geometry *g, int m, const float *restrict padded, const float *restrict grad,
                             const unsigned char *restrict idx, const int *restrict positions,
                             float *restrict gsum, unsigned char *restrict used,
                             int *restrict list, float *restrict acc_t, float *restrict acc_b, const int KH,
                             const int KW) {
    const int C = g->c, npool = g->hp * g->wp, npix = g->hc * g->wc, k = KH * KW, kk = g->pkh * g->pkw;
    const int hpad = g->h + 2 * g->ph, wpad = g->w + 2 * g->pw;
    int count = 0;
    memset(used, 0, npix);
    for (int o = 0; o < npool; o++)
        for (int c = 0; c < C; c++) used[positions[o * kk + idx[o * C + c]]] = 1;
    for (int p = 0; p < npix; p++)
        if (used[p]) {
            list[count++] = p;
            memset(gsum + (long)p * C, 0, sizeof(float) * C);
        }
    for (int o = 0; o < npool; o++) {
        const unsigned char *ix = idx + o * C;
        const int *pos = positions + o * kk;
        const float *gr = grad + o * C;
        for (int c = 0; c < C; c++) gsum[(long)pos[ix[c]] * C + c] += gr[c];
    }
    for (int c0 = 0; c0 < C; c0 += BC) {
        vf sum = (vf){0};
        for (int o = 0; o < npool; o++) sum += load(grad + o * C + c0);
        store(acc_b + c0, load(acc_b + c0) + sum);
    }
    for (int q = 0; q < m; q++)
        for (int c0 = 0; c0 < C; c0 += BC) {
            vf a[KH * KW];
            for (int t = 0; t < KH * KW; t++) a[t] = (vf){0};
            const float *map = padded + q * hpad * wpad;
            for (int e = 0; e < count; e++) {
                int p = list[e];
                const float *src = map + (p / g->wc) * wpad + p % g->wc;
                vf gv = load(gsum + (long)p * C + c0);
                for (int i = 0; i < KH; i++)
                    for (int j = 0; j < KW; j++) a[i * KW + j] += src[i * wpad + j] * gv;
            }
            for (int t = 0; t < KH * KW; t++) {
                float *at = acc_t + (long)(q * k + t) * C + c0;
                store(at, load(at) + a[t]);
            }
        }
}

/* The backward pass of the image's block + pool. maps: (M, N, H, W), the one-channel maps whose
 * patches the weight-like gradients multiply (labkit.fastops passes [u > 0] * xhat and [u > 0]).
 * grad: (N, Hp, Wp, C), the pooled output's gradient; idx from block_pool_forward. Adds to prod
 * (C, M * K) the sums over pooled values of grad * (the M * K patch values at its maximum), and to
 * grad_bias (C) the sum of grad. Only the maxima get gradient, so only they are visited. */
void block_pool_backward(const Geometry *g, int m, const float *maps, const float *grad, const unsigned char *idx,
                         float *prod, float *grad_bias, int threads) {
    const int C = g->c, mk = m * g->kh * g->kw, npix = g->hc * g->wc;
    const int hpad = g->h + 2 * g->ph, wpad = g->w + 2 * g->pw;
    int *positions = malloc(sizeof(int) * g->hp * g->wp * g->pkh * g->pkw);
    window_positions(g, positions);
    /* each thread sums into its own slot, and the slots are added in thread order afterwards: with the
     * static schedule the result is the same from run to run (a critical section would add them in
     * whatever order the threads finish) */
    const long slot = (long)mk * C + C;
    float *partial = calloc((size_t)threads * slot, sizeof(float));
#pragma omp parallel num_threads(threads)
    {
        float *padded = calloc((size_t)m * hpad * wpad, sizeof(float));  /* the borders stay zero */
        float *gsum = malloc(sizeof(float) * npix * C);
        unsigned char *used = malloc(npix);
        int *list = malloc(sizeof(int) * npix);
        float *acc_t = partial + omp_get_thread_num() * slot, *acc_b = acc_t + (long)mk * C;
#pragma omp for schedule(static)
        for (int n = 0; n < g->n; n++) {
            long base = (long)n * g->hp * g->wp * C;
            pad_maps(g, m, maps, n, padded);
            if (g->kh == 3 && g->kw == 3)
                accumulate_image(g, m, padded, grad + base, idx + base, positions, gsum, used, list, acc_t, acc_b,
                                 3, 3);
            else
                accumulate_image(g, m, padded, grad + base, idx + base, positions, gsum, used, list, acc_t, acc_b,
                                 g->kh, g->kw);
        }
        free(padded);
        free(gsum);
        free(used);
        free(list);
    }
    for (int th = 0; th < threads; th++) {
        const float *acc_t = partial + th * slot, *acc_b = acc_t + (long)mk * C;
        for (int c = 0; c < C; c++) {
            for (int t = 0; t < mk; t++) prod[c * mk + t] += acc_t[t * C + c];
            grad_bias[c] += acc_b[c];
        }
    }
    free(partial);
    free(positions);
}

/* ------------------------------------------------------------------ GroupNorm + ReLU
 * x, out: (N, P, C) with P pixels; G groups of C / G channels; mean, rstd: (N, G). Each image is
 * read from the cache after its first pass. */
INLINE void norm_relu_forward_image(int P, int G, const float *restrict xi, const float *restrict weight,
                                    const float *restrict bias, float eps, float *restrict oi, float *restrict mean,
                                    float *restrict rstd, const int C) {
    const int cg = C / G;
    const float count = (float)P * cg;
    float s[C], mu[C], sq[C], scale[C], shift[C];
    for (int c = 0; c < C; c++) s[c] = sq[c] = 0.0f;
    for (int p = 0; p < P; p++)
        for (int c = 0; c < C; c++) s[c] += xi[p * C + c];
    for (int gi = 0; gi < G; gi++) {
        float t = 0.0f;
        for (int c = gi * cg; c < (gi + 1) * cg; c++) t += s[c];
        for (int c = gi * cg; c < (gi + 1) * cg; c++) mu[c] = t / count;
        mean[gi] = t / count;
    }
    for (int p = 0; p < P; p++)
        for (int c = 0; c < C; c++) {
            float d = xi[p * C + c] - mu[c];
            sq[c] += d * d;
        }
    for (int gi = 0; gi < G; gi++) {
        float t = 0.0f;
        for (int c = gi * cg; c < (gi + 1) * cg; c++) t += sq[c];
        float r = 1.0f / sqrtf(t / count + eps);
        rstd[gi] = r;
        for (int c = gi * cg; c < (gi + 1) * cg; c++) {
            scale[c] = r * weight[c];
            shift[c] = bias[c] - mu[c] * scale[c];
        }
    }
    for (int p = 0; p < P; p++)
        for (int c = 0; c < C; c++) {
            float v = xi[p * C + c] * scale[c] + shift[c];
            oi[p * C + c] = v > 0.0f ? v : 0.0f;
        }
}

void norm_relu_forward(int n_img, int P, int C, int G, const float *x, const float *weight, const float *bias,
                       float eps, float *out, float *mean, float *rstd, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int n = 0; n < n_img; n++) {
        long off = (long)n * P * C;
        if (C == 32)
            norm_relu_forward_image(P, G, x + off, weight, bias, eps, out + off, mean + n * G, rstd + n * G, 32);
        else
            norm_relu_forward_image(P, G, x + off, weight, bias, eps, out + off, mean + n * G, rstd + n * G, C);
    }
}

/* grad_out, out, x: (N, P, C). Writes grad_x (N, P, C) and, per image and channel, sum_g and
 * sum_gc (N, C): the sums of g = grad_out * [out > 0] and of g * (x - mean), from which the caller
 * takes the weight and bias gradients. */
INLINE void norm_relu_backward_image(int P, int G, const float *restrict go, const float *restrict oi,
                                     const float *restrict xi, const float *restrict mean, const float *restrict rstd,
                                     const float *restrict weight, float *restrict gx, float *restrict sum_g,
                                     float *restrict sum_gc, const int C) {
    const int cg = C / G;
    const float count = (float)P * cg;
    float sg[C], sgx[C], a[C], k[C], b[C];
    for (int c = 0; c < C; c++) sg[c] = sgx[c] = 0.0f;
    for (int p = 0; p < P; p++)
        for (int c = 0; c < C; c++) {
            float g = oi[p * C + c] > 0.0f ? go[p * C + c] : 0.0f;
            sg[c] += g;
            sgx[c] += g * xi[p * C + c];
        }
    for (int gi = 0; gi < G; gi++) {
        float mu = mean[gi], r = rstd[gi], m1 = 0.0f, m2 = 0.0f;
        for (int c = gi * cg; c < (gi + 1) * cg; c++) {
            float sc = sgx[c] - mu * sg[c];
            sum_g[c] = sg[c];
            sum_gc[c] = sc;
            m1 += sg[c] * weight[c];
            m2 += sc * weight[c];
        }
        m1 /= count;
        m2 = m2 * r / count;
        float kk = -r * r * m2;
        for (int c = gi * cg; c < (gi + 1) * cg; c++) {
            a[c] = r * weight[c];
            k[c] = kk;
            b[c] = -r * m1 - kk * mu;
        }
    }
    for (int p = 0; p < P; p++)
        for (int c = 0; c < C; c++) {
            float g = oi[p * C + c] > 0.0f ? go[p * C + c] : 0.0f;
            gx[p * C + c] = g * a[c] + xi[p * C + c] * k[c] + b[c];
        }
}

void norm_relu_backward(int n_img, int P, int C, int G, const float *grad_out, const float *out, const float *x,
                        const float *mean, const float *rstd, const float *weight, float *grad_x, float *sum_g,
                        float *sum_gc, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int n = 0; n < n_img; n++) {
        long off = (long)n * P * C;
        if (C == 32)
            norm_relu_backward_image(P, G, grad_out + off, out + off, x + off, mean + n * G, rstd + n * G, weight,
                                     grad_x + off, sum_g + n * C, sum_gc + n * C, 32);
        else
            norm_relu_backward_image(P, G, grad_out + off, out + off, x + off, mean + n * G, rstd + n * G, weight,
                                     grad_x + off, sum_g + n * C, sum_gc + n * C, C);
    }
}

/* ------------------------------------------------------------------ 3x3 convolution, 32 -> 32 channels
 * y (N, H, W, 32) = conv(x (N, H, W, 32), weight) + bias, stride 1, zero padding 1, by Winograd's
 * F(2x2, 3x3): each 2x2 block of output pixels (a tile) comes from the 4x4 input patch around it,
 * transformed (V = B^T d B), multiplied channel-wise with the transformed weight (U = G g G^T,
 * from conv3x3_weight: U[e][ci][co] for the 16 elements e of the 4x4 transform) and
 * transformed back (Y = A^T M A). That is 16 products of 32x32 per 4 output pixels instead of 36:
 * 2.25x fewer multiply-adds, in exchange for additions in the transforms. The products run RT tiles
 * at a time, the tiles of all images numbered in one sequence, so every block of RT is full; each
 * tile's arithmetic does not depend on which block it falls in, so results do not depend on the
 * batch size. The backward pass for x is the same convolution of the output gradient with the weight
 * flipped and its channels swapped (the Python side flips and swaps it before conv3x3_weight). */
int vector_floats(void) { return BC; }  /* fastops uses conv3x3_forward only with 8 or more */

#define WC 32                   /* channels in and out */
#define WNV (WC / BC)           /* vectors per 32 channels */
#if BC == 16
#define RT 8                    /* tiles per block: RT x 2 vector sums (16 of the 32 registers) */
#else
#define RT 6                    /* AVX / SSE: RT x 2 sums (12 of the 16 registers), half the channels per pass */
#endif

/* One block of nt (<= rows) tiles starting at global tile t0: input transform into V (16, rows, WC). */
INLINE void winograd_input(const float *x, int h, int w, int tw, int T, long t0, int nt, float *V, int rows) {
    for (int r = 0; r < nt; r++) {
        const long gt = t0 + r;
        const int t = (int)(gt % T), y0 = 2 * (t / tw) - 1, x0 = 2 * (t % tw) - 1;
        const float *xi = x + (gt / T) * h * w * WC;
        for (int v = 0; v < WNV; v++) {
            vf d[4][4], q[4][4];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) {
                    const int yy = y0 + i, xx = x0 + j;
                    d[i][j] = (yy >= 0 && yy < h && xx >= 0 && xx < w) ? load(xi + (yy * w + xx) * WC + v * BC) : (vf){0};
                }
            for (int j = 0; j < 4; j++) {  /* B^T d: rows */
                q[0][j] = d[0][j] - d[2][j];
                q[1][j] = d[1][j] + d[2][j];
                q[2][j] = d[2][j] - d[1][j];
                q[3][j] = d[1][j] - d[3][j];
            }
            for (int i = 0; i < 4; i++) {  /* (B^T d) B: columns */
                store(V + ((i * 4 + 0) * rows + r) * WC + v * BC, q[i][0] - q[i][2]);
                store(V + ((i * 4 + 1) * rows + r) * WC + v * BC, q[i][1] + q[i][2]);
                store(V + ((i * 4 + 2) * rows + r) * WC + v * BC, q[i][2] - q[i][1]);
                store(V + ((i * 4 + 3) * rows + r) * WC + v * BC, q[i][1] - q[i][3]);
            }
        }
    }
}

/* M[e] = V[e] (RT x WC) @ U[e] (WC x WC), two output vectors at a time; V and M are (NE, RT, WC), NE
 * the transform's elements (16 for F(2x2, 3x3), 36 for F(4x4, 3x3)). */
INLINE void winograd_products(const float *U, const float *V, float *M, const int NE) {
    for (int e = 0; e < NE; e++)
        for (int v0 = 0; v0 < WNV; v0 += 2) {
            const float *Ue = U + e * WC * WC + v0 * BC;
            vf a0[RT], a1[RT];
            for (int r = 0; r < RT; r++) a0[r] = a1[r] = (vf){0};
            for (int k = 0; k < WC; k++) {
                const vf u0 = load(Ue + k * WC), u1 = load(Ue + k * WC + BC);
                for (int r = 0; r < RT; r++) {
                    const float s = V[(e * RT + r) * WC + k];
                    a0[r] += s * u0;
                    a1[r] += s * u1;
                }
            }
            for (int r = 0; r < RT; r++) {
                store(M + (e * RT + r) * WC + v0 * BC, a0[r]);
                store(M + (e * RT + r) * WC + (v0 + 1) * BC, a1[r]);
            }
        }
}

/* Output transform of the block's nt tiles, plus the bias, into y (edge tiles write what lies inside). */
INLINE void winograd_output(float *y, int h, int w, int tw, int T, long t0, int nt, const float *M,
                            const float *bias) {
    for (int r = 0; r < nt; r++) {
        const long gt = t0 + r;
        const int t = (int)(gt % T), y0 = 2 * (t / tw), x0 = 2 * (t % tw);
        float *yi = y + (gt / T) * h * w * WC;
        for (int v = 0; v < WNV; v++) {
            vf m[4][4], o[2][4];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) m[i][j] = load(M + ((i * 4 + j) * RT + r) * WC + v * BC);
            for (int j = 0; j < 4; j++) {  /* A^T M: rows */
                o[0][j] = m[0][j] + m[1][j] + m[2][j];
                o[1][j] = m[1][j] - m[2][j] - m[3][j];
            }
            const vf b = bias ? load(bias + v * BC) : (vf){0};
            for (int i = 0; i < 2 && y0 + i < h; i++) {  /* (A^T M) A: columns */
                store(yi + ((y0 + i) * w + x0) * WC + v * BC, o[i][0] + o[i][1] + o[i][2] + b);
                if (x0 + 1 < w) store(yi + ((y0 + i) * w + x0 + 1) * WC + v * BC, o[i][1] - o[i][2] - o[i][3] + b);
            }
        }
    }
}

/* U (16, 32 in, 32 out) = G g G^T for each kernel g of weight (32 out, 32 in, 3, 3), G = [[1, 0, 0],
 * [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]. */
static void weight2(const float *weight, float *U, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int o = 0; o < WC; o++)
        for (int i = 0; i < WC; i++) {
            const float *g = weight + (o * WC + i) * 9;
            float gg[4][3], u[4][4];
            for (int j = 0; j < 3; j++) {  /* G g: rows */
                gg[0][j] = g[j];
                gg[1][j] = 0.5f * (g[j] + g[3 + j] + g[6 + j]);
                gg[2][j] = 0.5f * (g[j] - g[3 + j] + g[6 + j]);
                gg[3][j] = g[6 + j];
            }
            for (int a = 0; a < 4; a++) {  /* (G g) G^T: columns */
                u[a][0] = gg[a][0];
                u[a][1] = 0.5f * (gg[a][0] + gg[a][1] + gg[a][2]);
                u[a][2] = 0.5f * (gg[a][0] - gg[a][1] + gg[a][2]);
                u[a][3] = gg[a][2];
            }
            for (int e = 0; e < 16; e++) U[(e * WC + i) * WC + o] = u[e / 4][e % 4];
        }
}

/* The weight gradient of that convolution, by the same transform: with V = B^T d B for each tile's
 * input patch and Z = A dY A^T for its 2x2 block of output gradient (zero outside the map), the
 * gradient of U is the sum over tiles of Z (x) V (outer product over channels, per element e), and
 * grad_weight (32 out, 32 in, 3, 3) = G^T (that sum) G. RW tiles per block; each thread sums into its
 * own (16, 32 in, 32 out) slot, and the slots are added in thread order (the same result every run). */
#define RW (2 * RT)
#if BC == 16
#define IB 8                    /* input channels per register block: IB x 2 vector sums */
#else
#define IB 4
#endif
INLINE void winograd_grad_input(const float *grad, int h, int w, int tw, int T, long t0, int nt, float *Z) {
    for (int r = 0; r < nt; r++) {
        const long gt = t0 + r;
        const int t = (int)(gt % T), y0 = 2 * (t / tw), x0 = 2 * (t % tw);
        const float *gi = grad + (gt / T) * h * w * WC;
        for (int v = 0; v < WNV; v++) {
            vf d[2][2], q[4][2];
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 2; j++)
                    d[i][j] = (y0 + i < h && x0 + j < w) ? load(gi + ((y0 + i) * w + x0 + j) * WC + v * BC) : (vf){0};
            for (int j = 0; j < 2; j++) {  /* A dY: rows */
                q[0][j] = d[0][j];
                q[1][j] = d[0][j] + d[1][j];
                q[2][j] = d[0][j] - d[1][j];
                q[3][j] = -d[1][j];
            }
            for (int i = 0; i < 4; i++) {  /* (A dY) A^T: columns */
                store(Z + ((i * 4 + 0) * RW + r) * WC + v * BC, q[i][0]);
                store(Z + ((i * 4 + 1) * RW + r) * WC + v * BC, q[i][0] + q[i][1]);
                store(Z + ((i * 4 + 2) * RW + r) * WC + v * BC, q[i][0] - q[i][1]);
                store(Z + ((i * 4 + 3) * RW + r) * WC + v * BC, -q[i][1]);
            }
        }
    }
}

/* acc[e][i][o] += sum over the block's rows r of V[e][r][i] * Z[e][r][o] (rows past nt are zero), e < NE. */
INLINE void winograd_outer(const float *V, const float *Z, float *acc, const int NE) {
    for (int e = 0; e < NE; e++)
        for (int i0 = 0; i0 < WC; i0 += IB)
            for (int v0 = 0; v0 < WNV; v0 += 2) {
                float *a = acc + (e * WC + i0) * WC + v0 * BC;
                vf a0[IB], a1[IB];
                for (int i = 0; i < IB; i++) {
                    a0[i] = load(a + i * WC);
                    a1[i] = load(a + i * WC + BC);
                }
                for (int r = 0; r < RW; r++) {
                    const float *zr = Z + (e * RW + r) * WC + v0 * BC, *vr = V + (e * RW + r) * WC + i0;
                    const vf z0 = load(zr), z1 = load(zr + BC);
                    for (int i = 0; i < IB; i++) {
                        a0[i] += vr[i] * z0;
                        a1[i] += vr[i] * z1;
                    }
                }
                for (int i = 0; i < IB; i++) {
                    store(a + i * WC, a0[i]);
                    store(a + i * WC + BC, a1[i]);
                }
            }
}

void conv3x3_weight_grad(int n, int h, int w, const float *x, const float *grad, float *grad_weight, int threads) {
    const int th = (h + 1) / 2, tw = (w + 1) / 2, T = th * tw;
    const long total = (long)n * T, blocks = (total + RW - 1) / RW, slot = 16 * WC * WC;
    float *partial = calloc((size_t)threads * slot, sizeof(float));
#pragma omp parallel num_threads(threads)
    {
        float *V = calloc(16 * RW * WC, sizeof(float)), *Z = calloc(16 * RW * WC, sizeof(float));
        float *acc = partial + omp_get_thread_num() * slot;
#pragma omp for schedule(static)
        for (long blk = 0; blk < blocks; blk++) {
            const long t0 = blk * RW;
            const int nt = total - t0 < RW ? (int)(total - t0) : RW;
            if (nt < RW) {  /* a short last block: the rows past it must add nothing */
                memset(V, 0, sizeof(float) * 16 * RW * WC);
                memset(Z, 0, sizeof(float) * 16 * RW * WC);
            }
            winograd_input(x, h, w, tw, T, t0, nt, V, RW);
            winograd_grad_input(grad, h, w, tw, T, t0, nt, Z);
            winograd_outer(V, Z, acc, 16);
        }
        free(V);
        free(Z);
    }
    for (int t = 1; t < threads; t++)
        for (long k = 0; k < slot; k++) partial[k] += partial[t * slot + k];
    for (int o = 0; o < WC; o++)  /* grad_weight = G^T M G, G^T = [[1, 1/2, 1/2, 0], [0, 1/2, -1/2, 0], [0, 1/2, 1/2, 1]] */
        for (int i = 0; i < WC; i++) {
            float m[4][4], q[3][4];
            for (int e = 0; e < 16; e++) m[e / 4][e % 4] = partial[(e * WC + i) * WC + o];
            for (int b = 0; b < 4; b++) {
                q[0][b] = m[0][b] + 0.5f * (m[1][b] + m[2][b]);
                q[1][b] = 0.5f * (m[1][b] - m[2][b]);
                q[2][b] = 0.5f * (m[1][b] + m[2][b]) + m[3][b];
            }
            float *gw = grad_weight + (o * WC + i) * 9;
            for (int k = 0; k < 3; k++) {
                gw[k * 3 + 0] = q[k][0] + 0.5f * (q[k][1] + q[k][2]);
                gw[k * 3 + 1] = 0.5f * (q[k][1] - q[k][2]);
                gw[k * 3 + 2] = 0.5f * (q[k][1] + q[k][2]) + q[k][3];
            }
        }
    free(partial);
}

/* ------------------------------------------------------------------ the same convolution by F(4x4, 3x3)
 * Each 4x4 block of output pixels comes from its 6x6 input patch: 36 products of 32x32 per 16 output
 * pixels where F(2x2, 3x3) takes 64 (16 per 4) and the direct way 144. Fewer tiles straddle the map's
 * edge on 13x13 maps as well (16 tiles covering 16x16 against 49 covering 14x14), so there it takes
 * 576 products per map and channel pair against 784. The price is rounding: the transforms' larger
 * coefficients (up to 8 in A, 5 in B, 1/24 in G) make its float32 error 4-6x F(2x2, 3x3)'s (about 1e-6
 * relative; tests/test_native.py). labkit.fastops uses it for the forward pass and the input gradient
 * where it takes fewer products (winograd_tile); the weight gradient stays F(2x2, 3x3), which measured
 * as fast there (its sum over all tiles of a batch would also collect the larger rounding).
 * B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
 *        [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
 * G   = [[1/4, 0, 0], [-1/6, -1/6, -1/6], [-1/6, 1/6, -1/6], [1/24, 1/12, 1/6], [1/24, -1/12, 1/6], [0, 0, 1]],
 * A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]. */
#define INPUT6(d0, d1, d2, d3, d4, d5, r)       \
    do {                                        \
        r[0] = 4 * d0 - 5 * d2 + d4;            \
        r[1] = d3 + d4 - 4 * (d1 + d2);         \
        r[2] = d4 - d3 + 4 * (d1 - d2);         \
        r[3] = d4 - d2 + 2 * (d3 - d1);         \
        r[4] = d4 - d2 + 2 * (d1 - d3);         \
        r[5] = 4 * d1 - 5 * d3 + d5;            \
    } while (0)

INLINE void winograd4_input(const float *x, int h, int w, int tw, int T, long t0, int nt, float *V, int rows) {
    for (int r = 0; r < nt; r++) {
        const long gt = t0 + r;
        const int t = (int)(gt % T), y0 = 4 * (t / tw) - 1, x0 = 4 * (t % tw) - 1;
        const float *xi = x + (gt / T) * h * w * WC;
        for (int v = 0; v < WNV; v++) {
            vf d[6][6], q[6][6], o[6];
            for (int i = 0; i < 6; i++)
                for (int j = 0; j < 6; j++) {
                    const int yy = y0 + i, xx = x0 + j;
                    d[i][j] = (yy >= 0 && yy < h && xx >= 0 && xx < w) ? load(xi + (yy * w + xx) * WC + v * BC) : (vf){0};
                }
            for (int j = 0; j < 6; j++) {  /* B^T d: rows */
                INPUT6(d[0][j], d[1][j], d[2][j], d[3][j], d[4][j], d[5][j], o);
                for (int i = 0; i < 6; i++) q[i][j] = o[i];
            }
            for (int i = 0; i < 6; i++) {  /* (B^T d) B: columns */
                INPUT6(q[i][0], q[i][1], q[i][2], q[i][3], q[i][4], q[i][5], o);
                for (int j = 0; j < 6; j++) store(V + ((i * 6 + j) * rows + r) * WC + v * BC, o[j]);
            }
        }
    }
}

#define OUTPUT4(m0, m1, m2, m3, m4, m5, o)                 \
    do {                                                   \
        o[0] = m0 + m1 + m2 + m3 + m4;                     \
        o[1] = m1 - m2 + 2 * (m3 - m4);                    \
        o[2] = m1 + m2 + 4 * (m3 + m4);                    \
        o[3] = m1 - m2 + 8 * (m3 - m4) + m5;               \
    } while (0)

INLINE void winograd4_output(float *y, int h, int w, int tw, int T, long t0, int nt, const float *M,
                             const float *bias) {
    for (int r = 0; r < nt; r++) {
        const long gt = t0 + r;
        const int t = (int)(gt % T), y0 = 4 * (t / tw), x0 = 4 * (t % tw);
        float *yi = y + (gt / T) * h * w * WC;
        for (int v = 0; v < WNV; v++) {
            vf m[6][6], q[4][6], o[4];
            for (int i = 0; i < 6; i++)
                for (int j = 0; j < 6; j++) m[i][j] = load(M + ((i * 6 + j) * RT + r) * WC + v * BC);
            for (int j = 0; j < 6; j++) {  /* A^T M: rows */
                OUTPUT4(m[0][j], m[1][j], m[2][j], m[3][j], m[4][j], m[5][j], o);
                for (int i = 0; i < 4; i++) q[i][j] = o[i];
            }
            const vf b = bias ? load(bias + v * BC) : (vf){0};
            for (int i = 0; i < 4 && y0 + i < h; i++) {  /* (A^T M) A: columns */
                OUTPUT4(q[i][0], q[i][1], q[i][2], q[i][3], q[i][4], q[i][5], o);
                for (int j = 0; j < 4 && x0 + j < w; j++) store(yi + ((y0 + i) * w + x0 + j) * WC + v * BC, o[j] + b);
            }
        }
    }
}

#define KERNEL6(g0, g1, g2, u)                                              \
    do {                                                                    \
        u[0] = g0 / 4.0f;                                                   \
        u[1] = -(g0 + g1 + g2) / 6.0f;                                      \
        u[2] = -(g0 - g1 + g2) / 6.0f;                                      \
        u[3] = g0 / 24.0f + g1 / 12.0f + g2 / 6.0f;                         \
        u[4] = g0 / 24.0f - g1 / 12.0f + g2 / 6.0f;                         \
        u[5] = g2;                                                          \
    } while (0)

/* U (36, 32 in, 32 out) = G g G^T for each kernel g of weight (32 out, 32 in, 3, 3). */
static void weight4(const float *weight, float *U, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int o = 0; o < WC; o++)
        for (int i = 0; i < WC; i++) {
            const float *g = weight + (o * WC + i) * 9;
            float gg[6][3], u[6];
            for (int j = 0; j < 3; j++) {  /* G g: rows */
                KERNEL6(g[j], g[3 + j], g[6 + j], u);
                for (int a = 0; a < 6; a++) gg[a][j] = u[a];
            }
            for (int a = 0; a < 6; a++) {  /* (G g) G^T: columns */
                KERNEL6(gg[a][0], gg[a][1], gg[a][2], u);
                for (int b = 0; b < 6; b++) U[((a * 6 + b) * WC + i) * WC + o] = u[b];
            }
        }
}

/* ------------------------------------------------------------------ the entry points
 * tile: 2 for F(2x2, 3x3) (U holds 16 elements per channel pair), 4 for F(4x4, 3x3) (36). */
void conv3x3_weight(const float *weight, float *U, int tile, int threads) {
    (tile == 4 ? weight4 : weight2)(weight, U, threads);
}

void conv3x3_forward(int n, int h, int w, const float *x, const float *U, const float *bias, float *y, int tile,
                     int threads) {
    const int m = tile == 4 ? 4 : 2, th = (h + m - 1) / m, tw = (w + m - 1) / m, T = th * tw;
    const long total = (long)n * T, blocks = (total + RT - 1) / RT;
#pragma omp parallel num_threads(threads)
    {
        /* (E, RT, WC) with E = 16 or 36 elements; rows past a short last block are multiplied but never
         * written out, and zeros keep them finite */
        float V[36][RT][WC] __attribute__((aligned(64))) = {{{0}}};
        float M[36][RT][WC] __attribute__((aligned(64)));
#pragma omp for schedule(static)
        for (long blk = 0; blk < blocks; blk++) {
            const long t0 = blk * RT;
            const int nt = total - t0 < RT ? (int)(total - t0) : RT;
            if (m == 4) {
                winograd4_input(x, h, w, tw, T, t0, nt, &V[0][0][0], RT);
                winograd_products(U, &V[0][0][0], &M[0][0][0], 36);
                winograd4_output(y, h, w, tw, T, t0, nt, &M[0][0][0], bias);
            } else {
                winograd_input(x, h, w, tw, T, t0, nt, &V[0][0][0], RT);
                winograd_products(U, &V[0][0][0], &M[0][0][0], 16);
                winograd_output(y, h, w, tw, T, t0, nt, &M[0][0][0], bias);
            }
        }
    }
}
