/* Forward kernels: .tflite ops whose first input is int8. Numpy twins: device/step/fwd_int8.py (same names).
 * Each reads its arguments in the schema's order (sizes, references, parameters) and checks r->bad before
 * touching memory. Integer arithmetic as TFLite's reference kernels: int32 accumulators (the encoder's shapes
 * keep them far from overflow), MultiplyByQuantizedMultiplier for every fixed-point rescale (tt_mbqm, or its
 * shorter equivalent mbqm_pos for the non-negative multipliers the encoder gives conv, depthwise and add). */
#include "tt.h"

#define TT_MAXD 8     /* rank limit of the broadcast / reduce / pad ops (MAX_DIMS in fwd_int8.py) */
#ifndef TT_CHUNK
#define TT_CHUNK 64
#endif
#define CHUNK TT_CHUNK      /* conv / depthwise: output channels per block (per-channel state on the stack) */
#ifndef TT_NB
#define TT_NB 16
#endif
#define NB TT_NB         /* conv2d_s8 GEMM path: output channels per block (the vector lanes) */
#ifndef TT_KMAX
#define TT_KMAX 64
#endif
#define KMAX TT_KMAX       /* conv2d_s8 GEMM path: taps per output at most (the block's int16 weights: NB * KMAX * 2 = 2 KB) */

static int32_t wrap_add(int32_t a, int32_t b) { return (int32_t)((uint32_t)a + (uint32_t)b); }
static int8_t sat8(int32_t v, int32_t lo, int32_t hi) { return (int8_t)tt_clamp(v, lo, hi); }

/* the product of n sizes, or -1 if one is negative or there are more than TT_MAXD */
static int64_t prod(const int32_t *d, int32_t n) {
    int64_t p = 1;
    if (n < 0 || n > TT_MAXD) return -1;
    for (int32_t i = 0; i < n; i++) { if (d[i] < 0) return -1; p *= d[i]; }
    return p;
}

/* row-major element strides of `shape`, 0 along dimensions where `own` (an operand's shape) is 1 */
static void strides(int32_t nd, const int32_t *own, int64_t *st) {
    int64_t s = 1;
    for (int32_t d = nd - 1; d >= 0; d--) { st[d] = own[d] == 1 ? 0 : s; s *= own[d]; }
}

/* the operand offset of flat index i of an array of `shape` (row-major), by the operand's strides
 * (int32 division: one instruction on 32-bit cores, where an int64 one is a library call) */
static int64_t offset_of(int32_t i, int32_t nd, const int32_t *shape, const int64_t *st) {
    int64_t off = 0;
    for (int32_t d = nd - 1; d >= 0; d--) { off += (i % shape[d]) * st[d]; i /= shape[d]; }
    return off;
}

/* the common argument tail of conv2d_s8 and depthwise_s8, after the references */
typedef struct {
    int32_t bkind, nbs, sh, sw, dh, dw, pt, pl, zin, zout, lo, hi, nm, ns;
    const float *bscale;
    const int32_t *mult, *shift;
} conv_params;

static void rd_conv_params(tt_rd *r, conv_params *p) {
    p->bkind = rd_i32(r);
    p->bscale = rd_farr(r, &p->nbs);
    p->sh = rd_i32(r); p->sw = rd_i32(r); p->dh = rd_i32(r); p->dw = rd_i32(r);
    p->pt = rd_i32(r); p->pl = rd_i32(r);
    p->zin = rd_i32(r); p->zout = rd_i32(r); p->lo = rd_i32(r); p->hi = rd_i32(r);
    p->mult = rd_arr(r, &p->nm);
    p->shift = rd_arr(r, &p->ns);
}

static int conv_params_ok(const conv_params *p, int32_t cout) {
    return p->nm == cout && p->ns == cout && (p->bkind == 0 || (p->bkind == 1 && p->nbs >= cout))
        && p->sh > 0 && p->sw > 0 && p->dh > 0 && p->dw > 0;
}

/* sum of (x[i] - zin) * w[i] over n contiguous int8 pairs. x - zin fits int16, so written as an int16 product
 * summed in int32: compilers turn it into multiply-add instructions (pmaddwd, smlal) */
static inline int32_t dot_s8(const int8_t *x, const int8_t *w, int32_t n, int32_t zin) {
    const int16_t z = (int16_t)zin;
    int32_t acc = 0;
    for (int32_t i = 0; i < n; i++) acc += (int16_t)(x[i] - z) * (int16_t)w[i];
    return acc;
}

/* four dot products sharing x (filters ws bytes apart): acc[q] += sum_i (x[i] - zin) * w[q * ws + i] */
static inline void dot4_s8(const int8_t *x, const int8_t *w, int64_t ws, int32_t n, int32_t zin, int32_t *acc) {
    const int16_t z = (int16_t)zin;
    const int8_t *w0 = w, *w1 = w + ws, *w2 = w + 2 * ws, *w3 = w + 3 * ws;
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (int32_t i = 0; i < n; i++) {
        int16_t xv = (int16_t)(x[i] - z);
        a0 += xv * (int16_t)w0[i];
        a1 += xv * (int16_t)w1[i];
        a2 += xv * (int16_t)w2[i];
        a3 += xv * (int16_t)w3[i];
    }
    acc[0] += a0; acc[1] += a1; acc[2] += a2; acc[3] += a3;
}

/* acc[j] = sum over k < 2 kp of xs[k] * wp[(k / 2) * 2 nb + 2 j + k % 2], j < nb (8 or 16: a constant once
 * inlined, so the accumulators stay in registers). Taps go in pairs, the two products summed in int32 first:
 * the shape of the pairwise multiply-add instructions (pmaddwd, smlal); |sum| <= 2 * 255 * 128 */
static inline void gemv_pairs(const int16_t *xs, const int16_t *wp, int32_t kp, int32_t *acc, const int32_t nb) {
    int32_t a[NB];
    for (int32_t j = 0; j < nb; j++) a[j] = 0;
    for (int32_t k = 0; k < kp; k++) {
        const int16_t x0 = xs[2 * k], x1 = xs[2 * k + 1];
        const int16_t *w = wp + k * 2 * nb;
        for (int32_t j = 0; j < nb; j++) a[j] += (int32_t)x0 * w[2 * j] + (int32_t)x1 * w[2 * j + 1];
    }
    for (int32_t j = 0; j < nb; j++) acc[j] = a[j];
}

/* the per-channel requantization of a block of CHUNK output channels, prepared once per block */
typedef struct { int32_t bias[CHUNK], mult[CHUNK], left[CHUNK], right[CHUNK]; } requant_block;

/* channels c0.. c0+nc-1; 0 if a multiplier is negative or a shift out of TFLite's range [-31, 30] */
static int requant_prepare(requant_block *q, const conv_params *p, const uint8_t *b, int32_t c0, int32_t nc) {
    for (int32_t j = 0; j < nc; j++) {
        int32_t s = p->shift[c0 + j];
        if (p->mult[c0 + j] < 0 || s < -31 || s > 30) return 0;
        q->bias[j] = tt_bias_i32(b, p->bkind, p->bscale, c0 + j);
        q->mult[j] = p->mult[c0 + j];
        q->left[j] = s > 0 ? s : 0;
        q->right[j] = s > 0 ? 0 : -s;
    }
    return 1;
}

/* tt_mbqm(x, m, shift) for m >= 0 and shift = left - right in [-31, 30], in fewer steps (numpy twin:
 * multiply_by_quantized_multiplier): SaturatingRoundingDoublingHighMul(x, m) == floor((x m + 2^30) / 2^31),
 * and RoundingDivideByPOT by r > 0 == floor((v + 2^(r-1) - [v < 0]) / 2^r); >> of a negative value is
 * arithmetic (as tt.h assumes) */
static inline int32_t mbqm_pos(int32_t x, int32_t m, int32_t left, int32_t right) {
    int64_t v = ((int64_t)(int32_t)((uint32_t)x << left) * m + (1LL << 30)) >> 31;
    if (right > 0) v = (v + (1LL << (right - 1)) - (v < 0)) >> right;
    return (int32_t)v;
}

static inline int32_t requant_one(const requant_block *q, int32_t j, int32_t acc) {
    return mbqm_pos(wrap_add(acc, q->bias[j]), q->mult[j], q->left[j], q->right[j]);
}

/* the taps of a window along one axis that fall inside the input: [*k0, *k1) for start position i0 */
static void tap_range(int32_t i0, int32_t k, int32_t d, int32_t size, int32_t *k0, int32_t *k1) {
    int32_t a = 0, b = k;
    while (a < k && i0 + a * d < 0) a++;
    while (b > a && i0 + (b - 1) * d >= size) b--;
    *k0 = a;
    *k1 = b;
}

/* conv2d_s8 without groups, k = kh * kw * cin <= KMAX taps per output: a small int8 GEMM. Blocks of NB output
 * channels: the block's weights widened to int16 and transposed (pairs of taps, see gemv_pairs; channels past
 * cout are 0) once; per output pixel, its taps (ky, kx, ci) gathered as int16 x - zin (0 for taps outside the
 * input: they add nothing; one more 0 when k is odd), then all the block's channels at once. */
static int conv2d_gemm(const int8_t *x, const int8_t *wt, const uint8_t *b, int8_t *y, int32_t h, int32_t w,
                       int32_t cin, int32_t oh, int32_t ow, int32_t cout, int32_t kh, int32_t kw, const conv_params *p) {
    const int32_t k = kh * kw * cin, kp = (k + 1) / 2;
    const int16_t z = (int16_t)p->zin;
    int16_t wp[NB * KMAX], xs[KMAX];
    int32_t acc[NB];
    requant_block q;
    if (k & 1) xs[k] = 0;                                /* the odd last tap's partner */
    for (int32_t c0 = 0; c0 < cout; c0 += NB) {
        const int32_t nc = cout - c0 < NB ? cout - c0 : NB, nb = nc <= 8 ? 8 : NB;
        if (!requant_prepare(&q, p, b, c0, nc)) return TT_ERR_ARGS;
        for (int32_t t = 0; t < 2 * kp; t++)
            for (int32_t j = 0; j < nb; j++)
                wp[(t / 2) * 2 * nb + 2 * j + t % 2] = (int16_t)(j < nc && t < k ? wt[(int64_t)(c0 + j) * k + t] : 0);
        for (int32_t oy = 0; oy < oh; oy++) {
            const int32_t iy0 = oy * p->sh - p->pt;
            for (int32_t ox = 0; ox < ow; ox++) {
                const int32_t ix0 = ox * p->sw - p->pl;
                if (kh == 1 && kw == 1 && iy0 >= 0 && iy0 < h && ix0 >= 0 && ix0 < w) {
                    const int8_t *xp = x + ((int64_t)iy0 * w + ix0) * cin;
                    for (int32_t ci = 0; ci < cin; ci++) xs[ci] = (int16_t)(xp[ci] - z);
                } else {
                    int16_t *o = xs;
                    for (int32_t ky = 0; ky < kh; ky++) {
                        const int32_t iy = iy0 + ky * p->dh;
                        for (int32_t kx = 0; kx < kw; kx++, o += cin) {
                            const int32_t ix = ix0 + kx * p->dw;
                            const int8_t *xp = x + ((int64_t)iy * w + ix) * cin;
                            if (iy < 0 || iy >= h || ix < 0 || ix >= w)
                                for (int32_t ci = 0; ci < cin; ci++) o[ci] = 0;
                            else
                                for (int32_t ci = 0; ci < cin; ci++) o[ci] = (int16_t)(xp[ci] - z);
                        }
                    }
                }
                if (nb == 8) gemv_pairs(xs, wp, kp, acc, 8);
                else gemv_pairs(xs, wp, kp, acc, NB);
                int8_t *yp = y + ((int64_t)oy * ow + ox) * cout + c0;
                for (int32_t j = 0; j < nc; j++) yp[j] = sat8(requant_one(&q, j, acc[j]) + p->zout, p->lo, p->hi);
            }
        }
    }
    return TT_OK;
}

/* op 100 CONV_2D (conv2d_s8): h, w, cin, oh, ow, cout, kh, kw, groups; x (H, W, Cin), wt (Cout, KH, KW, Cin/groups),
 * b (Cout), y (OH, OW, Cout); the conv parameters. Taps outside the input add nothing (TFLite's reference).
 * Loop order: blocks of CHUNK output channels (requantization prepared once), output pixels, channels of the
 * block, filter rows ky. Without groups or dilation the taps of one filter row (kx, ci) are contiguous in x
 * and in the filter: one dot product per row, four output channels at a time; otherwise one dot product per
 * tap over the group's input channels. */
static int op_conv2d(tt_rd *r, tt_mem *m) {
    int32_t h = rd_i32(r), w = rd_i32(r), cin = rd_i32(r), oh = rd_i32(r), ow = rd_i32(r), cout = rd_i32(r);
    int32_t kh = rd_i32(r), kw = rd_i32(r), groups = rd_i32(r);
    if (r->bad || groups <= 0 || cin % groups || cout % groups) return TT_ERR_ARGS;
    int32_t cin_g = cin / groups, cout_g = cout / groups, k = kh * kw * cin_g;
    const int8_t *x = (const int8_t *)rd_ref(r, m, (int64_t)h * w * cin);
    const int8_t *wt = (const int8_t *)rd_ref(r, m, (int64_t)cout * k);
    const uint8_t *b = rd_ref(r, m, (int64_t)cout * 4);
    int8_t *y = (int8_t *)rd_ref(r, m, (int64_t)oh * ow * cout);
    conv_params p;
    rd_conv_params(r, &p);
    if (r->bad) return TT_ERR_BOUNDS;
    if (!conv_params_ok(&p, cout) || kh <= 0 || kw <= 0) return TT_ERR_ARGS;
    const int32_t zin = p.zin, zout = p.zout, lo = p.lo, hi = p.hi, sh = p.sh, sw = p.sw, dh = p.dh, dw = p.dw;
    const int rows = groups == 1 && dw == 1;
    requant_block q;
    if (groups == 1 && k <= KMAX) return conv2d_gemm(x, wt, b, y, h, w, cin, oh, ow, cout, kh, kw, &p);
    for (int32_t c0 = 0; c0 < cout; c0 += CHUNK) {
        int32_t nc = cout - c0 < CHUNK ? cout - c0 : CHUNK;
        if (!requant_prepare(&q, &p, b, c0, nc)) return TT_ERR_ARGS;
        for (int32_t oy = 0; oy < oh; oy++) {
            int32_t iy0 = oy * sh - p.pt, ky0, ky1;
            tap_range(iy0, kh, dh, h, &ky0, &ky1);
            for (int32_t ox = 0; ox < ow; ox++) {
                int32_t ix0 = ox * sw - p.pl, kx0, kx1;
                tap_range(ix0, kw, dw, w, &kx0, &kx1);
                int8_t *yp = y + ((int64_t)oy * ow + ox) * cout + c0;
                int32_t j = 0;
                if (rows) {
                    for (; j + 4 <= nc; j += 4) {
                        int32_t acc[4] = { 0, 0, 0, 0 };
                        const int8_t *wo = wt + (int64_t)(c0 + j) * k;
                        for (int32_t ky = ky0; ky < ky1; ky++)
                            dot4_s8(x + ((int64_t)(iy0 + ky * dh) * w + ix0 + kx0) * cin, wo + (ky * kw + kx0) * cin, k,
                                    (kx1 - kx0) * cin, zin, acc);
                        for (int32_t t = 0; t < 4; t++) yp[j + t] = sat8(requant_one(&q, j + t, acc[t]) + zout, lo, hi);
                    }
                }
                for (; j < nc; j++) {                              /* the rest, and every channel of grouped convs */
                    int32_t oc = c0 + j, acc = 0;
                    const int8_t *wo = wt + (int64_t)oc * k, *xg = x + oc / cout_g * cin_g;
                    for (int32_t ky = ky0; ky < ky1; ky++) {
                        const int8_t *xrow = xg + ((int64_t)(iy0 + ky * dh) * w + ix0) * cin;
                        for (int32_t kx = kx0; kx < kx1; kx++)
                            acc += dot_s8(xrow + (int64_t)kx * dw * cin, wo + (ky * kw + kx) * cin_g, cin_g, zin);
                    }
                    yp[j] = sat8(requant_one(&q, j, acc) + zout, lo, hi);
                }
            }
        }
    }
    return TT_OK;
}

/* op 101 DEPTHWISE_CONV_2D (depthwise_s8): h, w, cin, oh, ow, cout, kh, kw; x (H, W, Cin), wt (KH, KW, Cout),
 * b (Cout), y (OH, OW, Cout); the conv parameters. Output channel oc reads input channel oc / (cout / cin).
 * Loop order: blocks of CHUNK channels, output pixels, taps (ky, kx), channels of the block. */
static int op_depthwise(tt_rd *r, tt_mem *m) {
    int32_t h = rd_i32(r), w = rd_i32(r), cin = rd_i32(r), oh = rd_i32(r), ow = rd_i32(r), cout = rd_i32(r);
    int32_t kh = rd_i32(r), kw = rd_i32(r);
    if (r->bad || cin <= 0 || cout % cin) return TT_ERR_ARGS;
    int32_t mult_d = cout / cin;
    const int8_t *x = (const int8_t *)rd_ref(r, m, (int64_t)h * w * cin);
    const int8_t *wt = (const int8_t *)rd_ref(r, m, (int64_t)kh * kw * cout);
    const uint8_t *b = rd_ref(r, m, (int64_t)cout * 4);
    int8_t *y = (int8_t *)rd_ref(r, m, (int64_t)oh * ow * cout);
    conv_params p;
    rd_conv_params(r, &p);
    if (r->bad) return TT_ERR_BOUNDS;
    if (!conv_params_ok(&p, cout) || kh <= 0 || kw <= 0) return TT_ERR_ARGS;
    const int16_t z = (int16_t)p.zin;
    int32_t acc[CHUNK];
    requant_block q;
    for (int32_t c0 = 0; c0 < cout; c0 += CHUNK) {
        int32_t nc = cout - c0 < CHUNK ? cout - c0 : CHUNK;
        if (!requant_prepare(&q, &p, b, c0, nc)) return TT_ERR_ARGS;
        for (int32_t oy = 0; oy < oh; oy++) {
            for (int32_t ox = 0; ox < ow; ox++) {
                for (int32_t j = 0; j < nc; j++) acc[j] = 0;
                for (int32_t ky = 0; ky < kh; ky++) {
                    int32_t iy = oy * p.sh - p.pt + ky * p.dh;
                    if (iy < 0 || iy >= h) continue;
                    for (int32_t kx = 0; kx < kw; kx++) {
                        int32_t ix = ox * p.sw - p.pl + kx * p.dw;
                        if (ix < 0 || ix >= w) continue;
                        const int8_t *xp = x + ((int64_t)iy * w + ix) * cin;
                        const int8_t *wp = wt + (int64_t)(ky * kw + kx) * cout + c0;
                        if (mult_d == 1) {                 /* int16 products: see dot_s8 */
                            for (int32_t j = 0; j < nc; j++) acc[j] += (int16_t)(xp[c0 + j] - z) * (int16_t)wp[j];
                        } else {
                            for (int32_t j = 0; j < nc; j++) acc[j] += (int16_t)(xp[(c0 + j) / mult_d] - z) * (int16_t)wp[j];
                        }
                    }
                }
                int8_t *yp = y + ((int64_t)oy * ow + ox) * cout + c0;
                for (int32_t j = 0; j < nc; j++)
                    yp[j] = sat8(requant_one(&q, j, acc[j]) + p.zout, p.lo, p.hi);
            }
        }
    }
    return TT_OK;
}

/* round half away from zero of a double (numpy: floor(|p|) + (|p| - floor >= 0.5)), saturated to +-2^30
 * (an int8 result clamps it anyway; int32 conversions stay single instructions on 32-bit cores) */
static int32_t round_away_f64(double p) {
    double a = p < 0 ? -p : p;
    if (a >= 1073741824.0) return p < 0 ? -1073741824 : 1073741824;
    int32_t q = (int32_t)a;
    q += (a - (double)q >= 0.5);
    return p < 0 ? -q : q;
}

/* op 102 FULLY_CONNECTED (fully_connected_s8): rows, cin, cout; x (rows, Cin), wt (Cout, Cin), b, y (rows, Cout);
 * bkind, bscale[], zin, zout, lo, hi, real[] (float64 per channel, two words each, low first).
 * The reference's rescale: round_half_away(double(acc + bias) * real[oc]) + zout, one rounding. */
static int op_fully_connected(tt_rd *r, tt_mem *m) {
    int32_t rows = rd_i32(r), cin = rd_i32(r), cout = rd_i32(r);
    const int8_t *x = (const int8_t *)rd_ref(r, m, (int64_t)rows * cin);
    const int8_t *wt = (const int8_t *)rd_ref(r, m, (int64_t)cout * cin);
    const uint8_t *b = rd_ref(r, m, (int64_t)cout * 4);
    int8_t *y = (int8_t *)rd_ref(r, m, (int64_t)rows * cout);
    int32_t bkind = rd_i32(r), nbs, nreal;
    const float *bscale = rd_farr(r, &nbs);
    int32_t zin = rd_i32(r), zout = rd_i32(r), lo = rd_i32(r), hi = rd_i32(r);
    const int32_t *real = rd_arr(r, &nreal);
    if (r->bad) return TT_ERR_BOUNDS;
    if (nreal != 2 * cout || !(bkind == 0 || (bkind == 1 && nbs >= cout))) return TT_ERR_ARGS;
    for (int32_t oc = 0; oc < cout; oc++) {
        union { uint64_t u; double d; } sc;
        sc.u = ((uint64_t)(uint32_t)real[2 * oc + 1] << 32) | (uint32_t)real[2 * oc];
        double bias = tt_bias_i32(b, bkind, bscale, oc);
        const int8_t *wo = wt + (int64_t)oc * cin;
        for (int32_t row = 0; row < rows; row++) {
            const int8_t *xr = x + (int64_t)row * cin;
            int32_t acc = dot_s8(xr, wo, cin, zin);
            /* acc + bias is exact in double (|.| < 2^32) */
            y[(int64_t)row * cout + oc] = sat8(round_away_f64(((double)acc + bias) * sc.d) + zout, lo, hi);
        }
    }
    return TT_OK;
}

/* the broadcast shapes of add_s8 / mul_s8: nd dims of the output, a and b (same rank, sizes 1 broadcast) */
typedef struct { int32_t nd; const int32_t *shape; int64_t sa[TT_MAXD], sb[TT_MAXD]; } bcast;

static int rd_bcast(tt_rd *r, bcast *bc, int32_t n, int32_t na, int32_t nb) {
    int32_t n1, n2;
    bc->shape = rd_arr(r, &bc->nd);
    const int32_t *as = rd_arr(r, &n1), *bs = rd_arr(r, &n2);
    if (r->bad || n1 != bc->nd || n2 != bc->nd || prod(bc->shape, bc->nd) != n || prod(as, n1) != na
        || prod(bs, n2) != nb) return 0;
    for (int32_t d = 0; d < bc->nd; d++)
        if ((as[d] != 1 && as[d] != bc->shape[d]) || (bs[d] != 1 && bs[d] != bc->shape[d])) return 0;
    strides(bc->nd, as, bc->sa);
    strides(bc->nd, bs, bc->sb);
    return 1;
}

/* op 103 ADD / SUB (add_s8): n, na, nb; a, b, y; shape[], ashape[], bshape[], sign, za, zb, zout, ma, sa, mb, sb,
 * mout, sout, lo, hi. TFLite's pipeline: ((v - z) << 20) rescaled to twice the larger scale, a + sign b,
 * rescaled to the output. */
static int op_add(tt_rd *r, tt_mem *m) {
    int32_t n = rd_i32(r), na = rd_i32(r), nb = rd_i32(r);
    const int8_t *a = (const int8_t *)rd_ref(r, m, na);
    const int8_t *b = (const int8_t *)rd_ref(r, m, nb);
    int8_t *y = (int8_t *)rd_ref(r, m, n);
    bcast bc;
    int ok = rd_bcast(r, &bc, n, na, nb);
    int32_t sign = rd_i32(r), za = rd_i32(r), zb = rd_i32(r), zout = rd_i32(r), ma = rd_i32(r), sa = rd_i32(r);
    int32_t mb = rd_i32(r), sb = rd_i32(r), mout = rd_i32(r), sout = rd_i32(r), lo = rd_i32(r), hi = rd_i32(r);
    if (r->bad) return TT_ERR_BOUNDS;
    if (!ok || ma < 0 || mb < 0 || mout < 0 || sa < -31 || sa > 0 || sb < -31 || sb > 0 || sout < -31 || sout > 30)
        return TT_ERR_ARGS;
    int flat = na == n && nb == n;
    for (int32_t i = 0; i < n; i++) {
        int64_t ia = flat ? i : offset_of(i, bc.nd, bc.shape, bc.sa), ib = flat ? i : offset_of(i, bc.nd, bc.shape, bc.sb);
        int32_t a1 = mbqm_pos(((int32_t)a[ia] - za) * (1 << 20), ma, 0, -sa);     /* s_a / (2 max scale) <= 1/2 */
        int32_t b1 = mbqm_pos(((int32_t)b[ib] - zb) * (1 << 20), mb, 0, -sb);
        y[i] = sat8(mbqm_pos(a1 + sign * b1, mout, sout > 0 ? sout : 0, sout > 0 ? 0 : -sout) + zout, lo, hi);
    }
    return TT_OK;
}

/* op 104 MUL (mul_s8): n, na, nb; a, b, y; shape[], ashape[], bshape[], za, zb, zout, m, s, lo, hi */
static int op_mul(tt_rd *r, tt_mem *m) {
    int32_t n = rd_i32(r), na = rd_i32(r), nb = rd_i32(r);
    const int8_t *a = (const int8_t *)rd_ref(r, m, na);
    const int8_t *b = (const int8_t *)rd_ref(r, m, nb);
    int8_t *y = (int8_t *)rd_ref(r, m, n);
    bcast bc;
    int ok = rd_bcast(r, &bc, n, na, nb);
    int32_t za = rd_i32(r), zb = rd_i32(r), zout = rd_i32(r), mm = rd_i32(r), s = rd_i32(r), lo = rd_i32(r), hi = rd_i32(r);
    if (r->bad) return TT_ERR_BOUNDS;
    if (!ok) return TT_ERR_ARGS;
    int flat = na == n && nb == n;
    for (int32_t i = 0; i < n; i++) {
        int64_t ia = flat ? i : offset_of(i, bc.nd, bc.shape, bc.sa), ib = flat ? i : offset_of(i, bc.nd, bc.shape, bc.sb);
        int32_t prod_ = ((int32_t)a[ia] - za) * ((int32_t)b[ib] - zb);
        y[i] = sat8(tt_mbqm(prod_, mm, s) + zout, lo, hi);
    }
    return TT_OK;
}

/* op 105 MEAN (mean_s8): n, nout; x, y; shape[], axes[] (a 0/1 flag per dimension), zin, zout, m, s.
 * y[kept index] = mbqm(sum over the flagged dimensions - zin * count, m, s) + zout, clamped to int8. */
static int op_mean(tt_rd *r, tt_mem *m) {
    int32_t n = rd_i32(r), nout = rd_i32(r), nd, nax;
    const int8_t *x = (const int8_t *)rd_ref(r, m, n);
    int8_t *y = (int8_t *)rd_ref(r, m, nout);
    const int32_t *shape = rd_arr(r, &nd), *axes = rd_arr(r, &nax);
    int32_t zin = rd_i32(r), zout = rd_i32(r), mm = rd_i32(r), s = rd_i32(r);
    if (r->bad) return TT_ERR_BOUNDS;
    if (nax != nd || prod(shape, nd) != n) return TT_ERR_ARGS;
    /* split the dimensions into kept and reduced ones, each with its element strides in x */
    int32_t kd[TT_MAXD], rdim[TT_MAXD], nk = 0, nr = 0, cnt = 1;
    int64_t all[TT_MAXD], ks[TT_MAXD], rs[TT_MAXD], st = 1;
    for (int32_t d = nd - 1; d >= 0; d--) { all[d] = st; st *= shape[d]; }
    for (int32_t d = 0; d < nd; d++) {
        if (axes[d]) { rdim[nr] = shape[d]; rs[nr++] = all[d]; cnt *= shape[d]; }
        else { kd[nk] = shape[d]; ks[nk++] = all[d]; }
    }
    if (cnt == 0 || n / cnt != nout) return TT_ERR_ARGS;
    for (int32_t o = 0; o < nout; o++) {
        int64_t base = offset_of(o, nk, kd, ks);
        int32_t sum = 0;
        for (int32_t j = 0; j < cnt; j++) sum += x[base + offset_of(j, nr, rdim, rs)];
        y[o] = sat8(tt_mbqm(sum - zin * cnt, mm, s) + zout, -128, 127);
    }
    return TT_OK;
}

/* op 106 PAD / PADV2 (pad_s8): n, nout; x, y; shape[] (of x), before[], after[], value.
 * y is filled with value, then each row of x (its last dimension) is copied to its place. */
static int op_pad(tt_rd *r, tt_mem *m) {
    int32_t n = rd_i32(r), nout = rd_i32(r), nd, n1, n2;
    const int8_t *x = (const int8_t *)rd_ref(r, m, n);
    int8_t *y = (int8_t *)rd_ref(r, m, nout);
    const int32_t *shape = rd_arr(r, &nd), *before = rd_arr(r, &n1), *after = rd_arr(r, &n2);
    int32_t value = rd_i32(r);
    if (r->bad) return TT_ERR_BOUNDS;
    if (nd < 1 || n1 != nd || n2 != nd || prod(shape, nd) != n) return TT_ERR_ARGS;
    int32_t oshape[TT_MAXD];
    int64_t os[TT_MAXD], st = 1;
    for (int32_t d = 0; d < nd; d++) {
        if (before[d] < 0 || after[d] < 0) return TT_ERR_ARGS;
        oshape[d] = shape[d] + before[d] + after[d];
    }
    if (prod(oshape, nd) != nout) return TT_ERR_ARGS;
    for (int32_t d = nd - 1; d >= 0; d--) { os[d] = st; st *= oshape[d]; }
    for (int32_t i = 0; i < nout; i++) y[i] = (int8_t)value;
    int32_t row = shape[nd - 1];
    if (row == 0) return TT_OK;
    int64_t lead = 0;                      /* the output offset of the first element of input row 0 */
    for (int32_t d = 0; d < nd; d++) lead += before[d] * os[d];
    for (int32_t k = 0; k < n / row; k++) {
        int64_t off = lead + offset_of(k, nd - 1, shape, os);   /* row k: its index over dims 0..nd-2, output strides */
        for (int32_t j = 0; j < row; j++) y[off + j] = x[(int64_t)k * row + j];
    }
    return TT_OK;
}

/* op 107 DEQUANTIZE (dequantize_s8): outer, ch, inner; x (outer, ch, inner) int8, y float32; zp[], scale[]:
 * y = float(x - zp[c]) * scale[c] (one float32 rounding) */
static int op_dequantize(tt_rd *r, tt_mem *m) {
    int32_t outer = rd_i32(r), ch = rd_i32(r), inner = rd_i32(r), nz, ns;
    int64_t n = (int64_t)outer * ch * inner;
    const int8_t *x = (const int8_t *)rd_ref(r, m, n);
    float *y = (float *)rd_ref(r, m, n * 4);
    const int32_t *zp = rd_arr(r, &nz);
    const float *scale = rd_farr(r, &ns);
    if (r->bad) return TT_ERR_BOUNDS;
    if (nz != ch || ns != ch) return TT_ERR_ARGS;
    for (int64_t o = 0; o < outer; o++)
        for (int32_t c = 0; c < ch; c++) {
            int64_t base = (o * ch + c) * inner;
            for (int64_t i = 0; i < inner; i++) y[base + i] = (float)((int32_t)x[base + i] - zp[c]) * scale[c];
        }
    return TT_OK;
}

/* op 108 QUANTIZE int8 -> int8, RELU family (requant_s8): n; x, y; zin, zout, m, s, lo, hi */
static int op_requant(tt_rd *r, tt_mem *m) {
    int32_t n = rd_i32(r);
    const int8_t *x = (const int8_t *)rd_ref(r, m, n);
    int8_t *y = (int8_t *)rd_ref(r, m, n);
    int32_t zin = rd_i32(r), zout = rd_i32(r), mm = rd_i32(r), s = rd_i32(r), lo = rd_i32(r), hi = rd_i32(r);
    if (r->bad) return TT_ERR_BOUNDS;
    for (int32_t i = 0; i < n; i++) y[i] = sat8(tt_mbqm((int32_t)x[i] - zin, mm, s) + zout, lo, hi);
    return TT_OK;
}

/* op 109 AVERAGE_POOL_2D (avg_pool_s8), op 110 MAX_POOL_2D (max_pool_s8): h, w, c, oh, ow; x, y; kh, kw, sh, sw,
 * pt, pl, lo, hi. Only window pixels inside the input count; the average rounds half away from zero. */
static int op_pool(tt_rd *r, tt_mem *m, int is_max) {
    int32_t h = rd_i32(r), w = rd_i32(r), c = rd_i32(r), oh = rd_i32(r), ow = rd_i32(r);
    const int8_t *x = (const int8_t *)rd_ref(r, m, (int64_t)h * w * c);
    int8_t *y = (int8_t *)rd_ref(r, m, (int64_t)oh * ow * c);
    int32_t kh = rd_i32(r), kw = rd_i32(r), sh = rd_i32(r), sw = rd_i32(r), pt = rd_i32(r), pl = rd_i32(r);
    int32_t lo = rd_i32(r), hi = rd_i32(r);
    if (r->bad) return TT_ERR_BOUNDS;
    for (int32_t oy = 0; oy < oh; oy++) {
        int32_t y0 = oy * sh - pt, y1 = y0 + kh;
        if (y0 < 0) y0 = 0;
        if (y1 > h) y1 = h;
        for (int32_t ox = 0; ox < ow; ox++) {
            int32_t x0 = ox * sw - pl, x1 = x0 + kw;
            if (x0 < 0) x0 = 0;
            if (x1 > w) x1 = w;
            int32_t count = (y1 - y0) * (x1 - x0);
            for (int32_t ch = 0; ch < c; ch++) {
                int32_t acc = is_max ? -128 : 0;
                for (int32_t iy = y0; iy < y1; iy++)
                    for (int32_t ix = x0; ix < x1; ix++) {
                        int32_t v = x[((int64_t)iy * w + ix) * c + ch];
                        if (is_max) acc = v > acc ? v : acc;
                        else acc += v;
                    }
                if (!is_max && count > 0)
                    acc = acc > 0 ? (acc + count / 2) / count : -((-acc + count / 2) / count);
                y[((int64_t)oy * ow + ox) * c + ch] = sat8(acc, lo, hi);
            }
        }
    }
    return TT_OK;
}

/* op 111 CONCATENATION, one input (concat_s8): rows, row, stride; x (rows, row), y (rows, stride) bytes; col */
static int op_concat(tt_rd *r, tt_mem *m) {
    int32_t rows = rd_i32(r), row = rd_i32(r), stride = rd_i32(r);
    const uint8_t *x = rd_ref(r, m, (int64_t)rows * row);
    uint8_t *y = rd_ref(r, m, (int64_t)rows * stride);
    int32_t col = rd_i32(r);
    if (r->bad) return TT_ERR_BOUNDS;
    if (col < 0 || row < 0 || (int64_t)col + row > stride) return TT_ERR_ARGS;
    for (int64_t k = 0; k < rows; k++)
        for (int32_t j = 0; j < row; j++) y[k * stride + col + j] = x[k * row + j];
    return TT_OK;
}

/* op 112 RESIZE_BILINEAR int8 (resize_bilinear_s8): h, w, c, oh, ow; x, y; ypos[], ylo[], yhi[] (oh each),
 * xpos[], xlo[], xhi[] (ow each): 10-bit fixed-point source coordinates and the two source rows/columns.
 * The four-term blend in int64, / 2^20 rounded half away from zero. */
static int op_resize_bilinear(tt_rd *r, tt_mem *m) {
    int32_t h = rd_i32(r), w = rd_i32(r), c = rd_i32(r), oh = rd_i32(r), ow = rd_i32(r), n[6];
    const int8_t *x = (const int8_t *)rd_ref(r, m, (int64_t)h * w * c);
    int8_t *y = (int8_t *)rd_ref(r, m, (int64_t)oh * ow * c);
    const int32_t *ypos = rd_arr(r, &n[0]), *ylo = rd_arr(r, &n[1]), *yhi = rd_arr(r, &n[2]);
    const int32_t *xpos = rd_arr(r, &n[3]), *xlo = rd_arr(r, &n[4]), *xhi = rd_arr(r, &n[5]);
    if (r->bad) return TT_ERR_BOUNDS;
    if (n[0] != oh || n[1] != oh || n[2] != oh || n[3] != ow || n[4] != ow || n[5] != ow) return TT_ERR_ARGS;
    for (int32_t i = 0; i < oh; i++) if (ylo[i] < 0 || ylo[i] >= h || yhi[i] < 0 || yhi[i] >= h) return TT_ERR_ARGS;
    for (int32_t i = 0; i < ow; i++) if (xlo[i] < 0 || xlo[i] >= w || xhi[i] < 0 || xhi[i] >= w) return TT_ERR_ARGS;
    for (int32_t oy = 0; oy < oh; oy++) {
        int64_t dy = ypos[oy] - 1024LL * ylo[oy];
        const int8_t *r0 = x + (int64_t)ylo[oy] * w * c, *r1 = x + (int64_t)yhi[oy] * w * c;
        for (int32_t ox = 0; ox < ow; ox++) {
            int64_t dx = xpos[ox] - 1024LL * xlo[ox];
            int64_t a = (int64_t)xlo[ox] * c, bb = (int64_t)xhi[ox] * c;
            for (int32_t ch = 0; ch < c; ch++) {
                int64_t out = r0[a + ch] * (1024 - dy) * (1024 - dx) + r1[a + ch] * dy * (1024 - dx)
                            + r0[bb + ch] * (1024 - dy) * dx + r1[bb + ch] * dy * dx;
                int64_t s = out + (out > 0 ? (1 << 19) : -(1 << 19));
                y[((int64_t)oy * ow + ox) * c + ch] = (int8_t)(s >= 0 ? s >> 20 : -((-s) >> 20));
            }
        }
    }
    return TT_OK;
}

/* r == NULL asks whether the op is known (TT_OK) without running it */
int tt_fwd_int8_op(int32_t op, tt_rd *r, tt_mem *m) {
    switch (op) {
    case 100: return r ? op_conv2d(r, m) : TT_OK;
    case 101: return r ? op_depthwise(r, m) : TT_OK;
    case 102: return r ? op_fully_connected(r, m) : TT_OK;
    case 103: return r ? op_add(r, m) : TT_OK;
    case 104: return r ? op_mul(r, m) : TT_OK;
    case 105: return r ? op_mean(r, m) : TT_OK;
    case 106: return r ? op_pad(r, m) : TT_OK;
    case 107: return r ? op_dequantize(r, m) : TT_OK;
    case 108: return r ? op_requant(r, m) : TT_OK;
    case 109: return r ? op_pool(r, m, 0) : TT_OK;
    case 110: return r ? op_pool(r, m, 1) : TT_OK;
    case 111: return r ? op_concat(r, m) : TT_OK;
    case 112: return r ? op_resize_bilinear(r, m) : TT_OK;
    default: return TT_ERR_OP;
    }
}
