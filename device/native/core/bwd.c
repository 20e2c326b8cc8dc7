/* Backward kernels of the graph ops. Numpy twins: device/step/bwd.py (same operations, same order).
 *
 * Shared rules: an output with acc 0 starts from 0, with acc 1 from what it holds; terms are then added to it
 * one at a time in the op's stated order. Other sums start from 0.0f and add one term at a time. Weights:
 * wkind 0 int8 in the model (.tflite layout), value (float)(q - wzp) * wscale[channel]; wkind 1 float32 in
 * the model (.tflite layout); wkind 2 float32 in the arena, our layout (device/graph.py). Kernel taps that
 * fall into the padding are skipped. */
#include "tt.h"

#ifndef TT_CHUNK
#define TT_CHUNK 64
#endif
#define CHUNK TT_CHUNK   /* weights dequantized at a time into a stack buffer (floats): one row, never the whole weight */

static void zero_f32(float *p, int64_t n) { for (int64_t i = 0; i < n; i++) p[i] = 0.0f; }

/* [*lo, *hi): the outputs o whose tap t reads input o * stride + t - pad inside [0, n_in) (bwd.py tap_range) */
static void tap_range(int32_t n_in, int32_t n_out, int32_t stride, int32_t pad, int32_t t, int32_t *lo, int32_t *hi) {
    int32_t a = pad - t, b = n_in - 1 + pad - t;
    int32_t l = a > 0 ? (a + stride - 1) / stride : 0;
    int32_t u = b >= 0 ? b / stride + 1 : 0;
    if (u > n_out) u = n_out;
    *lo = l;
    *hi = u > l ? u : l;
}

/* a saved forward input element as float32: kind 0 float32, 1 int8 (float)(q - zp) * scale */
static inline float x_at(const uint8_t *x, int32_t kind, int64_t k, float scale, int32_t zp) {
    if (kind == 0) return ((const float *)x)[k];
    return (float)((int32_t)((const int8_t *)x)[k] - zp) * scale;
}

/* buf[c] = weight element k + c * step as float32, c < n (see the rules above); wkind 0 with one scale */
static void load_w(float *buf, const uint8_t *wt, int32_t kind, int64_t k, int64_t step, int32_t n, float scale, int32_t zp) {
    if (kind == 0) {
        const int8_t *q = (const int8_t *)wt + k;
        for (int32_t c = 0; c < n; c++) buf[c] = (float)((int32_t)q[c * step] - zp) * scale;
    } else {
        const float *f = (const float *)wt + k;
        for (int32_t c = 0; c < n; c++) buf[c] = f[c * step];
    }
}

static int sizes_ok(int32_t h, int32_t w, int32_t c, int32_t oh, int32_t ow) {
    return h > 0 && w > 0 && c > 0 && oh > 0 && ow > 0;
}

/* the output row oy whose kernel row i reads input row y (y = oy * stride + i - pad), or -1 */
static int32_t out_row(int32_t y, int32_t i, int32_t stride, int32_t pad, int32_t n_out) {
    int32_t t = y + pad - i;
    if (t < 0 || t % stride) return -1;
    return t / stride < n_out ? t / stride : -1;
}

#ifndef TT_CB
#define TT_CB 16
#endif
#define CB TT_CB   /* conv_dx 1x1: input channels per register block (the vector lanes) */
#ifndef TT_COB
#define TT_COB 16
#endif
#define COB TT_COB  /* conv_dx 1x1: output channels per weight block (CB * COB floats = 1 KB on the stack) */

/* one pixel's dx[c] (c < nb: 8 or 16, a constant once inlined, so the sums stay in registers) plus the terms of
 * no output channels in order: a[c] += d[o] * wb[o * CB + c], o = 0, 1, ... */
static inline void dx_block(float *a, const float *d, const float *wb, int32_t no, const int32_t nb) {
    float s[CB];
    for (int32_t c = 0; c < nb; c++) s[c] = a[c];
    for (int32_t o = 0; o < no; o++) {
        const float t = d[o];
        for (int32_t c = 0; c < nb; c++) s[c] += t * wb[o * CB + c];
    }
    for (int32_t c = 0; c < nb; c++) a[c] = s[c];
}

/* conv_dx of a 1x1 conv (stride 1, no padding, no groups): dx (npix, cin) = (acc ? dx : 0) + terms dy[p, co] *
 * w(co, ci) for co increasing, as op_conv_dx. Blocks of CB input channels x COB output channels: the block's
 * weights dequantized once into wb; per pixel, the block's dx run through registers (padding lanes see 0
 * weights and are not stored), the output-channel blocks in order, so each dx element keeps its term order. */
static void conv_dx_1x1(const float *dy, const uint8_t *wt, float *dx, int64_t npix, int32_t cin, int32_t cout,
                        int32_t wkind, const float *scale, int32_t zp, int32_t acc) {
    float wb[COB * CB], a[CB];
    for (int32_t c0 = 0; c0 < cin; c0 += CB) {
        const int32_t n = cin - c0 < CB ? cin - c0 : CB, nb = n <= 8 ? 8 : CB;
        for (int32_t o0 = 0; o0 < cout; o0 += COB) {
            const int32_t no = cout - o0 < COB ? cout - o0 : COB;
            for (int32_t o = 0; o < no; o++) {
                if (wkind == 2)                                   /* HWIO: (ci, co) at ci * cout + co */
                    load_w(wb + o * CB, wt, 2, (int64_t)c0 * cout + o0 + o, cout, n, 0.0f, 0);
                else                                              /* OHWI: (co, ci) at co * cin + ci */
                    load_w(wb + o * CB, wt, wkind, (int64_t)(o0 + o) * cin + c0, 1, n, wkind == 0 ? scale[o0 + o] : 0.0f, zp);
                for (int32_t c = n; c < CB; c++) wb[o * CB + c] = 0.0f;
            }
            const int fresh = o0 == 0 && !acc;
            for (int64_t p = 0; p < npix; p++) {
                float *px = dx + p * cin + c0;
                for (int32_t c = 0; c < CB; c++) a[c] = fresh || c >= n ? 0.0f : px[c];
                if (nb == 8) dx_block(a, dy + p * cout + o0, wb, no, 8);
                else dx_block(a, dy + p * cout + o0, wb, no, CB);
                for (int32_t c = 0; c < n; c++) px[c] = a[c];
            }
        }
    }
}

/* op 200 CONV_DX: h, w, cin, oh, ow, cout, kh, kw, stride, pad_top, pad_left, groups, wkind, acc; dy, wt, dx;
 * wscale[], wzp. conv_dx in bwd.py. dx[y, x, ci] = (acc ? dx : 0) + terms one at a time: taps (i, j) row-major,
 * then output channels co of ci's group increasing; term = dy[oy, ox, co] * w(co, i, j, ci).
 * Loop: input row y (it stays in cache), tap, co, a chunk of the group's input channels (dequantized once per
 * row into buf: h times per weight, against h * w multiplies), output columns, channels. Each dx element
 * still sees its terms in (tap, co) order. */
static int op_conv_dx(tt_rd *r, tt_mem *m) {
    int32_t h = rd_i32(r), w = rd_i32(r), cin = rd_i32(r), oh = rd_i32(r), ow = rd_i32(r), cout = rd_i32(r);
    int32_t kh = rd_i32(r), kw = rd_i32(r), s = rd_i32(r), pt = rd_i32(r), pl = rd_i32(r), groups = rd_i32(r);
    int32_t wkind = rd_i32(r), acc = rd_i32(r);
    if (r->bad) return TT_ERR_ARGS;
    if (!sizes_ok(h, w, cin, oh, ow) || cout <= 0 || kh <= 0 || kw <= 0 || s <= 0 || pt < 0 || pl < 0 || groups <= 0
        || cin % groups || cout % groups || wkind < 0 || wkind > 2) return TT_ERR_ARGS;
    int32_t cig = cin / groups, cog = cout / groups;
    int64_t nw = (int64_t)cout * kh * kw * cig;
    const float *dy = (const float *)rd_ref(r, m, (int64_t)oh * ow * cout * 4);
    const uint8_t *wt = rd_ref(r, m, nw * (wkind == 0 ? 1 : 4));
    float *dx = (float *)rd_ref(r, m, (int64_t)h * w * cin * 4);
    int32_t ns;
    const float *scale = rd_farr(r, &ns);
    int32_t zp = rd_i32(r);
    if (r->bad) return TT_ERR_BOUNDS;
    if (!dy || !wt || !dx || (wkind == 0 && ns != cout)) return TT_ERR_ARGS;
    if (kh == 1 && kw == 1 && s == 1 && pt == 0 && pl == 0 && groups == 1 && oh == h && ow == w) {
        conv_dx_1x1(dy, wt, dx, (int64_t)h * w, cin, cout, wkind, scale, zp, acc);
        return TT_OK;
    }
    float buf[CHUNK];
    for (int32_t y = 0; y < h; y++) {
        float *row = dx + (int64_t)y * w * cin;
        if (!acc) zero_f32(row, (int64_t)w * cin);
        for (int32_t i = 0; i < kh; i++) {
            int32_t oy = out_row(y, i, s, pt, oh);
            if (oy < 0) continue;
            const float *dyrow = dy + (int64_t)oy * ow * cout;
            for (int32_t j = 0; j < kw; j++) {
                int32_t xlo, xhi;
                tap_range(w, ow, s, pl, j, &xlo, &xhi);
                if (xlo == xhi) continue;
                for (int32_t co = 0; co < cout; co++) {
                    int32_t cbase = (co / cog) * cig;             /* the group's first input channel */
                    for (int32_t c0 = 0; c0 < cig; c0 += CHUNK) {
                        int32_t n = cig - c0 < CHUNK ? cig - c0 : CHUNK;
                        if (wkind == 2)                                   /* HWIO: step cout */
                            load_w(buf, wt, 2, (((int64_t)i * kw + j) * cig + c0) * cout + co, cout, n, 0.0f, 0);
                        else                                              /* OHWI: contiguous */
                            load_w(buf, wt, wkind, (((int64_t)co * kh + i) * kw + j) * cig + c0, 1, n,
                                   wkind == 0 ? scale[co] : 0.0f, zp);
                        for (int32_t ox = xlo; ox < xhi; ox++) {
                            float d = dyrow[(int64_t)ox * cout + co];
                            float *px = row + (int64_t)(ox * s + j - pl) * cin + cbase + c0;
                            for (int32_t c = 0; c < n; c++) px[c] += d * buf[c];
                        }
                    }
                }
            }
        }
    }
    return TT_OK;
}

/* op 201 DWCONV_DX: h, w, c, oh, ow, kh, kw, stride, pad_top, pad_left, wkind, acc; dy, wt, dx; wscale[], wzp.
 * dwconv_dx in bwd.py. dx[y, x, ch] = (acc ? dx : 0) + dy[oy, ox, ch] * w[i, j, ch], one tap at a time, taps
 * (i, j) row-major. wt (1, kh, kw, c) for wkind 0/1, (kh, kw, 1, c) for wkind 2: the same element order.
 * Loop: input row y, tap, a chunk of channels (dequantized once per row into buf), output columns, channels. */
static int op_dwconv_dx(tt_rd *r, tt_mem *m) {
    int32_t h = rd_i32(r), w = rd_i32(r), c = rd_i32(r), oh = rd_i32(r), ow = rd_i32(r), kh = rd_i32(r), kw = rd_i32(r);
    int32_t s = rd_i32(r), pt = rd_i32(r), pl = rd_i32(r), wkind = rd_i32(r), acc = rd_i32(r);
    if (r->bad) return TT_ERR_ARGS;
    if (!sizes_ok(h, w, c, oh, ow) || kh <= 0 || kw <= 0 || s <= 0 || pt < 0 || pl < 0 || wkind < 0 || wkind > 2)
        return TT_ERR_ARGS;
    const float *dy = (const float *)rd_ref(r, m, (int64_t)oh * ow * c * 4);
    const uint8_t *wt = rd_ref(r, m, (int64_t)kh * kw * c * (wkind == 0 ? 1 : 4));
    float *dx = (float *)rd_ref(r, m, (int64_t)h * w * c * 4);
    int32_t ns;
    const float *scale = rd_farr(r, &ns);
    int32_t zp = rd_i32(r);
    if (r->bad) return TT_ERR_BOUNDS;
    if (!dy || !wt || !dx || (wkind == 0 && ns != c)) return TT_ERR_ARGS;
    float buf[CHUNK];
    for (int32_t y = 0; y < h; y++) {
        float *row = dx + (int64_t)y * w * c;
        if (!acc) zero_f32(row, (int64_t)w * c);
        for (int32_t i = 0; i < kh; i++) {
            int32_t oy = out_row(y, i, s, pt, oh);
            if (oy < 0) continue;
            const float *dyrow = dy + (int64_t)oy * ow * c;
            for (int32_t j = 0; j < kw; j++) {
                int32_t xlo, xhi;
                tap_range(w, ow, s, pl, j, &xlo, &xhi);
                if (xlo == xhi) continue;
                for (int32_t c0 = 0; c0 < c; c0 += CHUNK) {
                    int32_t n = c - c0 < CHUNK ? c - c0 : CHUNK;
                    if (wkind == 0) {                                     /* per-channel scales */
                        const int8_t *q = (const int8_t *)wt + ((int64_t)i * kw + j) * c + c0;
                        for (int32_t k = 0; k < n; k++) buf[k] = (float)((int32_t)q[k] - zp) * scale[c0 + k];
                    } else {
                        load_w(buf, wt, 1, ((int64_t)i * kw + j) * c + c0, 1, n, 0.0f, 0);
                    }
                    for (int32_t ox = xlo; ox < xhi; ox++) {
                        const float *pd = dyrow + (int64_t)ox * c + c0;
                        float *px = row + (int64_t)(ox * s + j - pl) * c + c0;
                        for (int32_t k = 0; k < n; k++) px[k] += pd[k] * buf[k];
                    }
                }
            }
        }
    }
    return TT_OK;
}

/* op 202 BIAS_GRAD: npos, c; dy, db. bias_grad in bwd.py: db[ch] = 0.0f + dy[0, ch] + dy[1, ch] + ... */
static int op_bias_grad(tt_rd *r, tt_mem *m) {
    int32_t npos = rd_i32(r), c = rd_i32(r);
    if (r->bad || npos < 0 || c < 0) return TT_ERR_ARGS;
    const float *dy = (const float *)rd_ref(r, m, (int64_t)npos * c * 4);
    float *db = (float *)rd_ref(r, m, (int64_t)c * 4);
    if (r->bad) return TT_ERR_BOUNDS;
    if (!dy || !db) return TT_ERR_ARGS;
    zero_f32(db, c);
    for (int32_t p = 0; p < npos; p++)
        for (int32_t ch = 0; ch < c; ch++) db[ch] += dy[(int64_t)p * c + ch];
    return TT_OK;
}

/* op 203 RELU_BWD: n, acc; dy, mask, dx. relu_bwd in bwd.py: dx (+)= dy * bit (0.0f / 1.0f), bits packed
 * most significant first. dx may be dy (in place) when acc is 0. */
static int op_relu_bwd(tt_rd *r, tt_mem *m) {
    int32_t n = rd_i32(r), acc = rd_i32(r);
    if (r->bad || n < 0) return TT_ERR_ARGS;
    const float *dy = (const float *)rd_ref(r, m, (int64_t)n * 4);
    const uint8_t *mask = rd_ref(r, m, ((int64_t)n + 7) / 8);
    float *dx = (float *)rd_ref(r, m, (int64_t)n * 4);
    if (r->bad) return TT_ERR_BOUNDS;
    if (!dy || !mask || !dx || (acc && dx == dy)) return TT_ERR_ARGS;
    /* a mask byte at a time (8 elements, most significant bit first); the same products as element by element */
    static const float bit[2] = { 0.0f, 1.0f };
    const int32_t full = n / 8;
    if (acc) {
        for (int32_t b = 0; b < full; b++) {
            const uint32_t mb = mask[b];
            const float *d = dy + 8 * (int64_t)b;
            float *o = dx + 8 * (int64_t)b;
            for (int32_t k = 0; k < 8; k++) o[k] = o[k] + d[k] * bit[(mb >> (7 - k)) & 1];
        }
    } else {
        for (int32_t b = 0; b < full; b++) {
            const uint32_t mb = mask[b];
            const float *d = dy + 8 * (int64_t)b;
            float *o = dx + 8 * (int64_t)b;
            for (int32_t k = 0; k < 8; k++) o[k] = d[k] * bit[(mb >> (7 - k)) & 1];
        }
    }
    for (int32_t i = 8 * full; i < n; i++) {
        float t = dy[i] * bit[(mask[i >> 3] >> (7 - (i & 7))) & 1];
        dx[i] = acc ? dx[i] + t : t;
    }
    return TT_OK;
}

/* op 204 GRAD_ACC: n, acc; src, dst. grad_acc in bwd.py: dst = src (acc 0) or dst + src (acc 1). */
static int op_grad_acc(tt_rd *r, tt_mem *m) {
    int32_t n = rd_i32(r), acc = rd_i32(r);
    if (r->bad || n < 0) return TT_ERR_ARGS;
    const float *src = (const float *)rd_ref(r, m, (int64_t)n * 4);
    float *dst = (float *)rd_ref(r, m, (int64_t)n * 4);
    if (r->bad) return TT_ERR_BOUNDS;
    if (!src || !dst) return TT_ERR_ARGS;
    for (int32_t i = 0; i < n; i++) dst[i] = acc ? dst[i] + src[i] : src[i];
    return TT_OK;
}

/* op 205 AVGPOOL_BWD: h, w, c, oh, ow, k, acc; dy, dx. avgpool_bwd in bwd.py (k x k stride k, ceil mode):
 * dx[y, x, ch] (+)= dy[y / k, x / k, ch] / (float)(rows * cols of that window). */
static int op_avgpool_bwd(tt_rd *r, tt_mem *m) {
    int32_t h = rd_i32(r), w = rd_i32(r), c = rd_i32(r), oh = rd_i32(r), ow = rd_i32(r), k = rd_i32(r), acc = rd_i32(r);
    if (r->bad || !sizes_ok(h, w, c, oh, ow) || k <= 0 || oh != (h + k - 1) / k || ow != (w + k - 1) / k) return TT_ERR_ARGS;
    const float *dy = (const float *)rd_ref(r, m, (int64_t)oh * ow * c * 4);
    float *dx = (float *)rd_ref(r, m, (int64_t)h * w * c * 4);
    if (r->bad) return TT_ERR_BOUNDS;
    if (!dy || !dx) return TT_ERR_ARGS;
    for (int32_t y = 0; y < h; y++) {
        int32_t oy = y / k, rows = h - k * oy < k ? h - k * oy : k;
        for (int32_t x = 0; x < w; x++) {
            int32_t ox = x / k, cols = w - k * ox < k ? w - k * ox : k;
            float area = (float)(rows * cols);
            const float *pd = dy + ((int64_t)oy * ow + ox) * c;
            float *px = dx + ((int64_t)y * w + x) * c;
            for (int32_t ch = 0; ch < c; ch++) {
                float t = pd[ch] / area;
                px[ch] = acc ? px[ch] + t : t;
            }
        }
    }
    return TT_OK;
}

/* op 206 RESIZE_BWD: h, w, c, oh, ow, acc; dy, dx; row_i0[], row_i1[], row_lam[], col_i0[], col_i1[], col_lam[].
 * resize_bwd in bwd.py, the adjoint of bilinear resize (h, w) -> (oh, ow). Weights rw0 = 1.0f - row_lam[o],
 * rw1 = row_lam[o] (columns alike). dx = (acc ? dx : 0), then for each output row o, each corner (a, b) in
 * (0,0), (0,1), (1,0), (1,1), each output column p: dx[row_ia[o], col_ib[p], :] += (rwa[o] * cwb[p]) * dy[o, p, :]. */
static int op_resize_bwd(tt_rd *r, tt_mem *m) {
    int32_t h = rd_i32(r), w = rd_i32(r), c = rd_i32(r), oh = rd_i32(r), ow = rd_i32(r), acc = rd_i32(r);
    if (r->bad || !sizes_ok(h, w, c, oh, ow)) return TT_ERR_ARGS;
    const float *dy = (const float *)rd_ref(r, m, (int64_t)oh * ow * c * 4);
    float *dx = (float *)rd_ref(r, m, (int64_t)h * w * c * 4);
    const int32_t *ri[2], *ci[2];
    const float *rl, *cl;
    int32_t n[6];
    ri[0] = rd_arr(r, &n[0]); ri[1] = rd_arr(r, &n[1]); rl = rd_farr(r, &n[2]);
    ci[0] = rd_arr(r, &n[3]); ci[1] = rd_arr(r, &n[4]); cl = rd_farr(r, &n[5]);
    if (r->bad) return TT_ERR_BOUNDS;
    if (!dy || !dx) return TT_ERR_ARGS;
    for (int32_t k = 0; k < 6; k++) if (n[k] != (k < 3 ? oh : ow)) return TT_ERR_ARGS;
    for (int32_t a = 0; a < 2; a++) {
        for (int32_t o = 0; o < oh; o++) if (ri[a][o] < 0 || ri[a][o] >= h) return TT_ERR_ARGS;
        for (int32_t p = 0; p < ow; p++) if (ci[a][p] < 0 || ci[a][p] >= w) return TT_ERR_ARGS;
    }
    if (!acc) zero_f32(dx, (int64_t)h * w * c);
    for (int32_t o = 0; o < oh; o++)
        for (int32_t a = 0; a < 2; a++) {
            float rw = a ? rl[o] : 1.0f - rl[o];
            float *row = dx + (int64_t)ri[a][o] * w * c;
            for (int32_t b = 0; b < 2; b++)
                for (int32_t p = 0; p < ow; p++) {
                    float wgt = rw * (b ? cl[p] : 1.0f - cl[p]);
                    const float *pd = dy + ((int64_t)o * ow + p) * c;
                    float *px = row + (int64_t)ci[b][p] * c;
                    for (int32_t ch = 0; ch < c; ch++) px[ch] += wgt * pd[ch];
                }
        }
    return TT_OK;
}

/* op 207 MEAN_BWD: h, w, c, acc; dy, dx. mean_bwd in bwd.py: dx[y, x, ch] (+)= dy[ch] / (float)(h * w). */
static int op_mean_bwd(tt_rd *r, tt_mem *m) {
    int32_t h = rd_i32(r), w = rd_i32(r), c = rd_i32(r), acc = rd_i32(r);
    if (r->bad || h <= 0 || w <= 0 || c <= 0) return TT_ERR_ARGS;
    const float *dy = (const float *)rd_ref(r, m, (int64_t)c * 4);
    float *dx = (float *)rd_ref(r, m, (int64_t)h * w * c * 4);
    if (r->bad) return TT_ERR_BOUNDS;
    if (!dy || !dx) return TT_ERR_ARGS;
    float n = (float)((int64_t)h * w);
    for (int64_t p = 0; p < (int64_t)h * w; p++)
        for (int32_t ch = 0; ch < c; ch++) {
            float t = dy[ch] / n;
            dx[p * c + ch] = acc ? dx[p * c + ch] + t : t;
        }
    return TT_OK;
}

/* op 208 GROUP_NORM_BWD: hw, c, groups, xkind, acc; x, dy, dx, gamma_ref, dgamma, dbeta; eps, gamma[], xscale, xzp.
 * group_norm_bwd in bwd.py. Per group (n = hw * cg elements), sums from 0.0f over positions in raster order,
 * then the group's channels: mean = sum(x) / n; var = sum((x - mean)^2) / n; rstd = 1 / sqrt(var + eps);
 * xhat = (x - mean) * rstd; dxhat = dy * gamma[ch]; m1 = sum(dxhat) / n; m2 = sum(dxhat * xhat) / n;
 * dx (+)= rstd * ((dxhat - m1) - xhat * m2); dgamma[ch] = sum_p dy * xhat, dbeta[ch] = sum_p dy (assigned).
 * gamma: gamma_ref when given, else the inline array. dx (not dy's memory), dgamma, dbeta may be absent. */
static int op_group_norm_bwd(tt_rd *r, tt_mem *m) {
    int32_t hw = rd_i32(r), c = rd_i32(r), groups = rd_i32(r), xkind = rd_i32(r), acc = rd_i32(r);
    if (r->bad || hw <= 0 || c <= 0 || groups <= 0 || c % groups || xkind < 0 || xkind > 1) return TT_ERR_ARGS;
    int64_t ne = (int64_t)hw * c;
    const uint8_t *x = rd_ref(r, m, ne * (xkind == 0 ? 4 : 1));
    const float *dy = (const float *)rd_ref(r, m, ne * 4);
    float *dx = (float *)rd_ref(r, m, ne * 4);
    const float *gref = (const float *)rd_ref(r, m, (int64_t)c * 4);
    float *dgamma = (float *)rd_ref(r, m, (int64_t)c * 4);
    float *dbeta = (float *)rd_ref(r, m, (int64_t)c * 4);
    float eps = rd_f32(r);
    int32_t ng;
    const float *ginl = rd_farr(r, &ng);
    float xscale = rd_f32(r);
    int32_t xzp = rd_i32(r);
    if (r->bad) return TT_ERR_BOUNDS;
    if (!x || !dy || (dx && dx == dy) || (!gref && ng != c)) return TT_ERR_ARGS;
    const float *gamma = gref ? gref : ginl;
    int32_t cg = c / groups;
    float n = (float)((int64_t)hw * cg);
    for (int32_t g = 0; g < groups; g++) {
        int32_t c0 = g * cg;
        float sum = 0.0f;
        for (int32_t p = 0; p < hw; p++)
            for (int32_t ch = c0; ch < c0 + cg; ch++) sum += x_at(x, xkind, (int64_t)p * c + ch, xscale, xzp);
        float mean = sum / n;
        float v = 0.0f;
        for (int32_t p = 0; p < hw; p++)
            for (int32_t ch = c0; ch < c0 + cg; ch++) {
                float d = x_at(x, xkind, (int64_t)p * c + ch, xscale, xzp) - mean;
                v += d * d;
            }
        float var = v / n;
        float rstd = 1.0f / tt_sqrtf(var + eps);
        float s1 = 0.0f, s2 = 0.0f;
        if (dgamma) zero_f32(dgamma + c0, cg);
        if (dbeta) zero_f32(dbeta + c0, cg);
        for (int32_t p = 0; p < hw; p++)
            for (int32_t ch = c0; ch < c0 + cg; ch++) {
                int64_t k = (int64_t)p * c + ch;
                float xhat = (x_at(x, xkind, k, xscale, xzp) - mean) * rstd;
                float dxhat = dy[k] * gamma[ch];
                s1 += dxhat;
                s2 += dxhat * xhat;
                if (dgamma) dgamma[ch] += dy[k] * xhat;
                if (dbeta) dbeta[ch] += dy[k];
            }
        if (!dx) continue;
        float m1 = s1 / n, m2 = s2 / n;
        for (int32_t p = 0; p < hw; p++)
            for (int32_t ch = c0; ch < c0 + cg; ch++) {
                int64_t k = (int64_t)p * c + ch;
                float xhat = (x_at(x, xkind, k, xscale, xzp) - mean) * rstd;
                float dxhat = dy[k] * gamma[ch];
                float t = rstd * ((dxhat - m1) - xhat * m2);
                dx[k] = acc ? dx[k] + t : t;
            }
    }
    return TT_OK;
}

/* op 209 FC_BWD: cin, cout, acc; dy, w, x, dx, dw, db; xscale, xzp. fc_bwd in bwd.py: w (cout, cin) float32,
 * x the saved int8 features (xf = (float)(x - xzp) * xscale). dx[i] = (acc ? dx : 0) + dy[o] * w[o, i] for o in
 * order; dw[o, i] = dy[o] * xf[i]; db = dy. dx, dw, db may be absent. */
static int op_fc_bwd(tt_rd *r, tt_mem *m) {
    int32_t cin = rd_i32(r), cout = rd_i32(r), acc = rd_i32(r);
    if (r->bad || cin <= 0 || cout <= 0) return TT_ERR_ARGS;
    const float *dy = (const float *)rd_ref(r, m, (int64_t)cout * 4);
    const float *w = (const float *)rd_ref(r, m, (int64_t)cout * cin * 4);
    const int8_t *x = (const int8_t *)rd_ref(r, m, cin);
    float *dx = (float *)rd_ref(r, m, (int64_t)cin * 4);
    float *dw = (float *)rd_ref(r, m, (int64_t)cout * cin * 4);
    float *db = (float *)rd_ref(r, m, (int64_t)cout * 4);
    float xscale = rd_f32(r);
    int32_t xzp = rd_i32(r);
    if (r->bad) return TT_ERR_BOUNDS;
    if (!dy || (dx && !w) || (dw && !x)) return TT_ERR_ARGS;
    if (dx) {
        if (!acc) zero_f32(dx, cin);
        for (int32_t o = 0; o < cout; o++) {
            float d = dy[o];
            for (int32_t i = 0; i < cin; i++) dx[i] += d * w[(int64_t)o * cin + i];
        }
    }
    if (dw)
        for (int32_t o = 0; o < cout; o++)
            for (int32_t i = 0; i < cin; i++) dw[(int64_t)o * cin + i] = dy[o] * ((float)((int32_t)x[i] - xzp) * xscale);
    if (db)
        for (int32_t o = 0; o < cout; o++) db[o] = dy[o];
    return TT_OK;
}

/* op 210 CONV_DW: h, w, cin, oh, ow, cout, kh, kw, stride, pad_top, pad_left, groups, xkind; x, dy, dw; xscale, xzp.
 * conv_dw in bwd.py: dw (kh, kw, cin/groups, cout) our HWIO, assigned: dw[i, j, cl, co] = 0.0f + x[y, x, ci] *
 * dy[oy, ox, co] + ... over the output positions (oy, ox) in raster order whose tap lies inside the input. */
static int op_conv_dw(tt_rd *r, tt_mem *m) {
    int32_t h = rd_i32(r), w = rd_i32(r), cin = rd_i32(r), oh = rd_i32(r), ow = rd_i32(r), cout = rd_i32(r);
    int32_t kh = rd_i32(r), kw = rd_i32(r), s = rd_i32(r), pt = rd_i32(r), pl = rd_i32(r), groups = rd_i32(r);
    int32_t xkind = rd_i32(r);
    if (r->bad) return TT_ERR_ARGS;
    if (!sizes_ok(h, w, cin, oh, ow) || cout <= 0 || kh <= 0 || kw <= 0 || s <= 0 || pt < 0 || pl < 0 || groups <= 0
        || cin % groups || cout % groups || xkind < 0 || xkind > 1) return TT_ERR_ARGS;
    int32_t cig = cin / groups, cog = cout / groups;
    const uint8_t *x = rd_ref(r, m, (int64_t)h * w * cin * (xkind == 0 ? 4 : 1));
    const float *dy = (const float *)rd_ref(r, m, (int64_t)oh * ow * cout * 4);
    float *dw = (float *)rd_ref(r, m, (int64_t)kh * kw * cig * cout * 4);
    float xscale = rd_f32(r);
    int32_t xzp = rd_i32(r);
    if (r->bad) return TT_ERR_BOUNDS;
    if (!x || !dy || !dw) return TT_ERR_ARGS;
    zero_f32(dw, (int64_t)kh * kw * cig * cout);
    for (int32_t i = 0; i < kh; i++) {
        int32_t ylo, yhi;
        tap_range(h, oh, s, pt, i, &ylo, &yhi);
        for (int32_t j = 0; j < kw; j++) {
            int32_t xlo, xhi;
            tap_range(w, ow, s, pl, j, &xlo, &xhi);
            float *tap = dw + ((int64_t)i * kw + j) * cig * cout;
            for (int32_t oy = ylo; oy < yhi; oy++) {
                int32_t y = oy * s + i - pt;
                for (int32_t ox = xlo; ox < xhi; ox++) {
                    int32_t xx = ox * s + j - pl;
                    const float *pd = dy + ((int64_t)oy * ow + ox) * cout;
                    int64_t xbase = ((int64_t)y * w + xx) * cin;
                    for (int32_t g = 0; g < groups; g++)
                        for (int32_t cl = 0; cl < cig; cl++) {
                            float xv = x_at(x, xkind, xbase + g * cig + cl, xscale, xzp);
                            float *row = tap + (int64_t)cl * cout + g * cog;
                            for (int32_t k = 0; k < cog; k++) row[k] += xv * pd[g * cog + k];
                        }
                }
            }
        }
    }
    return TT_OK;
}

/* op 211 DWCONV_DW: h, w, c, oh, ow, kh, kw, stride, pad_top, pad_left, xkind; x, dy, dw; xscale, xzp.
 * dwconv_dw in bwd.py: dw (kh, kw, 1, c), assigned: dw[i, j, 0, ch] = 0.0f + x[y, x, ch] * dy[oy, ox, ch] + ...
 * over the output positions in raster order whose tap lies inside the input. */
static int op_dwconv_dw(tt_rd *r, tt_mem *m) {
    int32_t h = rd_i32(r), w = rd_i32(r), c = rd_i32(r), oh = rd_i32(r), ow = rd_i32(r), kh = rd_i32(r), kw = rd_i32(r);
    int32_t s = rd_i32(r), pt = rd_i32(r), pl = rd_i32(r), xkind = rd_i32(r);
    if (r->bad) return TT_ERR_ARGS;
    if (!sizes_ok(h, w, c, oh, ow) || kh <= 0 || kw <= 0 || s <= 0 || pt < 0 || pl < 0 || xkind < 0 || xkind > 1)
        return TT_ERR_ARGS;
    const uint8_t *x = rd_ref(r, m, (int64_t)h * w * c * (xkind == 0 ? 4 : 1));
    const float *dy = (const float *)rd_ref(r, m, (int64_t)oh * ow * c * 4);
    float *dw = (float *)rd_ref(r, m, (int64_t)kh * kw * c * 4);
    float xscale = rd_f32(r);
    int32_t xzp = rd_i32(r);
    if (r->bad) return TT_ERR_BOUNDS;
    if (!x || !dy || !dw) return TT_ERR_ARGS;
    zero_f32(dw, (int64_t)kh * kw * c);
    for (int32_t i = 0; i < kh; i++) {
        int32_t ylo, yhi;
        tap_range(h, oh, s, pt, i, &ylo, &yhi);
        for (int32_t j = 0; j < kw; j++) {
            int32_t xlo, xhi;
            tap_range(w, ow, s, pl, j, &xlo, &xhi);
            float *tap = dw + ((int64_t)i * kw + j) * c;
            for (int32_t oy = ylo; oy < yhi; oy++) {
                int32_t y = oy * s + i - pt;
                for (int32_t ox = xlo; ox < xhi; ox++) {
                    int32_t xx = ox * s + j - pl;
                    const float *pd = dy + ((int64_t)oy * ow + ox) * c;
                    int64_t xbase = ((int64_t)y * w + xx) * c;
                    for (int32_t ch = 0; ch < c; ch++) tap[ch] += x_at(x, xkind, xbase + ch, xscale, xzp) * pd[ch];
                }
            }
        }
    }
    return TT_OK;
}

/* r == NULL asks whether the op is known (TT_OK) without running it */
int tt_bwd_op(int32_t op, tt_rd *r, tt_mem *m) {
    switch (op) {
    case 200: return r ? op_conv_dx(r, m) : TT_OK;
    case 201: return r ? op_dwconv_dx(r, m) : TT_OK;
    case 202: return r ? op_bias_grad(r, m) : TT_OK;
    case 203: return r ? op_relu_bwd(r, m) : TT_OK;
    case 204: return r ? op_grad_acc(r, m) : TT_OK;
    case 205: return r ? op_avgpool_bwd(r, m) : TT_OK;
    case 206: return r ? op_resize_bwd(r, m) : TT_OK;
    case 207: return r ? op_mean_bwd(r, m) : TT_OK;
    case 208: return r ? op_group_norm_bwd(r, m) : TT_OK;
    case 209: return r ? op_fc_bwd(r, m) : TT_OK;
    case 210: return r ? op_conv_dw(r, m) : TT_OK;
    case 211: return r ? op_dwconv_dw(r, m) : TT_OK;
    default: return TT_ERR_OP;
    }
}
