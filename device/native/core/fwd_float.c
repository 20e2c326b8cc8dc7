/* Forward kernels: .tflite ops whose first input is float32 (the float islands of lite residual branches).
 * Numpy twins: device/step/fwd_float.py, same operations in the same order (float32 throughout, no FMA):
 * conv / fully connected: acc = +0, + x * w term by term in (ky, kx, ci) order, padding taps as x = 0, + bias;
 * depthwise / average pool: acc = the first tap's term, + the others in (ky, kx) order;
 * mean: the first reduced element, + the others in row-major order, / n. The fused activation is clampf. */
#include "tt.h"

enum { MAXD = 4 };   /* dimensions of a coalesced broadcast, reduction or pad (the encoders merge the rest) */

/* the fused activation (fwd_float.clamp): v <= lo -> lo, then v >= hi -> hi; NaN stays NaN, and -0 becomes
 * +0 under RELU (lo = +0), as np.maximum(v, 0) gives. NONE is lo = -inf, hi = +inf. */
static inline float clampf(float v, float lo, float hi) {
    if (v <= lo) v = lo;
    if (v >= hi) v = hi;
    return v;
}

/* a 4-dimensional walk's largest element offset + 1 (0 for an empty shape): bounds-checks strided reads */
static int64_t span4(const int32_t *n, const int32_t *s) {
    int64_t hi = 0;
    for (int d = 0; d < MAXD; d++) {
        if (n[d] <= 0) return n[d] == 0 ? 0 : -1;
        if (s[d] < 0) return -1;
        hi += (int64_t)(n[d] - 1) * s[d];
    }
    return hi + 1;
}
static int64_t count4(const int32_t *n) { return (int64_t)n[0] * n[1] * n[2] * n[3]; }

/* the window geometry of conv and depthwise: strides, dilations, pads before (read in this order) */
typedef struct { int32_t sh, sw, dh, dw, pt, pl; } window;
static window rd_window(tt_rd *r) {
    window g;
    g.sh = rd_i32(r); g.sw = rd_i32(r); g.dh = rd_i32(r); g.dw = rd_i32(r); g.pt = rd_i32(r); g.pl = rd_i32(r);
    return g;
}

/* op 140 CONV2D_F32 (fwd_float.conv2d_f32): h, w, cin, oh, ow, cout, kh, kw, cin_g; x, f, b (or none), y;
 * sh, sw, dh, dw, pt, pl, lo, hi, wlayout (0: f is OHWI as in the .tflite; 1: HWIO, a trainable weight). Grouped when cin_g < cin: output channel o reads input channels
 * [g cin_g, (g + 1) cin_g), g = o / (cout / groups). Per output: acc = +0, + x * f over (ky, kx, ci) in that
 * order (a tap in the padding adds 0 * f, as the engine's zero padding), + bias, clamp.
 * Four output channels at a time: four independent sums, each still in (ky, kx, ci) order. */
static int op_conv2d(tt_rd *r, tt_mem *m) {
    int32_t h = rd_i32(r), w = rd_i32(r), cin = rd_i32(r), oh = rd_i32(r), ow = rd_i32(r), cout = rd_i32(r);
    int32_t kh = rd_i32(r), kw = rd_i32(r), cin_g = rd_i32(r);
    if (h < 0 || w < 0 || cin <= 0 || oh < 0 || ow < 0 || cout <= 0 || kh <= 0 || kw <= 0 || cin_g <= 0 ||
        cin % cin_g || cout % (cin / cin_g)) return TT_ERR_ARGS;
    const float *x = (const float *)rd_ref(r, m, (int64_t)h * w * cin * 4);
    const float *f = (const float *)rd_ref(r, m, (int64_t)cout * kh * kw * cin_g * 4);
    const float *b = (const float *)rd_ref(r, m, (int64_t)cout * 4);
    float *y = (float *)rd_ref(r, m, (int64_t)oh * ow * cout * 4);
    window g = rd_window(r);
    float lo = rd_f32(r), hi = rd_f32(r);
    int32_t wlayout = rd_i32(r);
    if (r->bad || !x || !f || !y) return TT_ERR_BOUNDS;
    if (wlayout != 0 && wlayout != 1) return TT_ERR_ARGS;
    const int32_t cout_g = cout / (cin / cin_g);
    /* element (o, tap, ci) of the filter: o * so + tap * st + ci * sc */
    const int64_t so = wlayout ? 1 : (int64_t)kh * kw * cin_g, st = wlayout ? (int64_t)cin_g * cout : cin_g,
                  sc = wlayout ? cout : 1;
    for (int32_t oy = 0; oy < oh; oy++) {
        for (int32_t ox = 0; ox < ow; ox++) {
            float *yp = y + ((int64_t)oy * ow + ox) * cout;
            for (int32_t o = 0; o < cout; ) {
                /* a block of up to 4 channels of one group */
                int32_t nb = cout_g - o % cout_g < 4 ? cout_g - o % cout_g : 4;
                const float *xg = x + (o / cout_g) * cin_g;
                const float *f0 = f + (int64_t)o * so;
                float acc[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
                for (int32_t ky = 0; ky < kh; ky++) {
                    int32_t iy = oy * g.sh - g.pt + ky * g.dh;
                    for (int32_t kx = 0; kx < kw; kx++) {
                        int32_t ix = ox * g.sw - g.pl + kx * g.dw;
                        int inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
                        const float *xp = inside ? xg + ((int64_t)iy * w + ix) * cin : xg;
                        const float *fk = f0 + (ky * kw + kx) * st;
                        if (nb == 4) {
                            for (int32_t ci = 0; ci < cin_g; ci++) {
                                float v = inside ? xp[ci] : 0.0f;
                                const float *fc = fk + ci * sc;
                                acc[0] += v * fc[0];
                                acc[1] += v * fc[so];
                                acc[2] += v * fc[2 * so];
                                acc[3] += v * fc[3 * so];
                            }
                        } else {
                            for (int32_t j = 0; j < nb; j++)
                                for (int32_t ci = 0; ci < cin_g; ci++)
                                    acc[j] += (inside ? xp[ci] : 0.0f) * fk[(int64_t)j * so + ci * sc];
                        }
                    }
                }
                for (int32_t j = 0; j < nb; j++) yp[o + j] = clampf(acc[j] + (b ? b[o + j] : 0.0f), lo, hi);
                o += nb;
            }
        }
    }
    return TT_OK;
}

/* op 141 DWCONV_F32 (fwd_float.dwconv_f32): h, w, cin, oh, ow, cout, kh, kw; x, f (1, kh, kw, cout), b (or none),
 * y; sh, sw, dh, dw, pt, pl, lo, hi. Output channel c reads input channel c / (cout / cin). Per output:
 * acc = the (0, 0) tap's x * f, + the other taps in (ky, kx) order (padding: x = 0), + bias, clamp. */
static int op_dwconv(tt_rd *r, tt_mem *m) {
    int32_t h = rd_i32(r), w = rd_i32(r), cin = rd_i32(r), oh = rd_i32(r), ow = rd_i32(r), cout = rd_i32(r);
    int32_t kh = rd_i32(r), kw = rd_i32(r);
    if (h < 0 || w < 0 || cin <= 0 || oh < 0 || ow < 0 || cout <= 0 || kh <= 0 || kw <= 0 || cout % cin)
        return TT_ERR_ARGS;
    const float *x = (const float *)rd_ref(r, m, (int64_t)h * w * cin * 4);
    const float *f = (const float *)rd_ref(r, m, (int64_t)kh * kw * cout * 4);
    const float *b = (const float *)rd_ref(r, m, (int64_t)cout * 4);
    float *y = (float *)rd_ref(r, m, (int64_t)oh * ow * cout * 4);
    window g = rd_window(r);
    float lo = rd_f32(r), hi = rd_f32(r);
    if (r->bad || !x || !f || !y) return TT_ERR_BOUNDS;
    const int32_t mult = cout / cin;
    for (int32_t oy = 0; oy < oh; oy++) {
        for (int32_t ox = 0; ox < ow; ox++) {
            float *yp = y + ((int64_t)oy * ow + ox) * cout;
            for (int32_t c = 0; c < cout; c++) {
                float acc = 0.0f;
                for (int32_t ky = 0; ky < kh; ky++) {
                    int32_t iy = oy * g.sh - g.pt + ky * g.dh;
                    for (int32_t kx = 0; kx < kw; kx++) {
                        int32_t ix = ox * g.sw - g.pl + kx * g.dw;
                        float v = iy >= 0 && iy < h && ix >= 0 && ix < w ? x[((int64_t)iy * w + ix) * cin + c / mult] : 0.0f;
                        float p = v * f[(ky * kw + kx) * cout + c];
                        acc = ky == 0 && kx == 0 ? p : acc + p;
                    }
                }
                yp[c] = clampf(acc + (b ? b[c] : 0.0f), lo, hi);
            }
        }
    }
    return TT_OK;
}

/* op 142 FC_F32 (fwd_float.fc_f32): rows, cin, cout; x (rows, cin), f (cout, cin), b (or none), y; lo, hi.
 * acc = +0, + x[i] * f[o, i] for i = 0, 1, ...; + bias; clamp. */
static int op_fc(tt_rd *r, tt_mem *m) {
    int32_t rows = rd_i32(r), cin = rd_i32(r), cout = rd_i32(r);
    if (rows < 0 || cin < 0 || cout < 0) return TT_ERR_ARGS;
    const float *x = (const float *)rd_ref(r, m, (int64_t)rows * cin * 4);
    const float *f = (const float *)rd_ref(r, m, (int64_t)cout * cin * 4);
    const float *b = (const float *)rd_ref(r, m, (int64_t)cout * 4);
    float *y = (float *)rd_ref(r, m, (int64_t)rows * cout * 4);
    float lo = rd_f32(r), hi = rd_f32(r);
    if (r->bad || !x || !f || !y) return TT_ERR_BOUNDS;
    for (int32_t n = 0; n < rows; n++) {
        const float *xr = x + (int64_t)n * cin;
        for (int32_t o = 0; o < cout; o++) {
            const float *fo = f + (int64_t)o * cin;
            float acc = 0.0f;
            for (int32_t i = 0; i < cin; i++) acc += xr[i] * fo[i];
            y[(int64_t)n * cout + o] = clampf(acc + (b ? b[o] : 0.0f), lo, hi);
        }
    }
    return TT_OK;
}

/* op 143 BINARY_F32 (fwd_float.binary_f32): n, na, nb; a, b, y; kind (0 ADD, 1 SUB, 2 MUL, 3 DIV,
 * 4 SQUARED_DIFFERENCE = (a - b) * (a - b)), shape[4], a's and b's element strides[4] (0 = broadcast), lo, hi.
 * y is written in row-major order of shape. */
static int op_binary(tt_rd *r, tt_mem *m) {
    int32_t n = rd_i32(r), na = rd_i32(r), nb = rd_i32(r);
    if (n < 0 || na < 0 || nb < 0) return TT_ERR_ARGS;
    const float *a = (const float *)rd_ref(r, m, (int64_t)na * 4);
    const float *b = (const float *)rd_ref(r, m, (int64_t)nb * 4);
    float *y = (float *)rd_ref(r, m, (int64_t)n * 4);
    int32_t kind = rd_i32(r), k1, k2, k3;
    const int32_t *sh = rd_arr(r, &k1), *sa = rd_arr(r, &k2), *sb = rd_arr(r, &k3);
    float lo = rd_f32(r), hi = rd_f32(r);
    if (r->bad || !a || !b || !y) return TT_ERR_BOUNDS;
    if (k1 != MAXD || k2 != MAXD || k3 != MAXD || kind < 0 || kind > 4 || count4(sh) != n ||
        span4(sh, sa) < 0 || span4(sh, sb) < 0) return TT_ERR_ARGS;
    if (n && (span4(sh, sa) > na || span4(sh, sb) > nb)) return TT_ERR_BOUNDS;
    float *yp = y;
    for (int32_t i0 = 0; i0 < sh[0]; i0++)
        for (int32_t i1 = 0; i1 < sh[1]; i1++)
            for (int32_t i2 = 0; i2 < sh[2]; i2++) {
                const float *ap = a + i0 * sa[0] + i1 * sa[1] + i2 * sa[2];
                const float *bp = b + i0 * sb[0] + i1 * sb[1] + i2 * sb[2];
                for (int32_t i3 = 0; i3 < sh[3]; i3++) {
                    float u = ap[i3 * sa[3]], v = bp[i3 * sb[3]], d;
                    switch (kind) {
                    case 0: d = u + v; break;
                    case 1: d = u - v; break;
                    case 2: d = u * v; break;
                    case 3: d = u / v; break;
                    default: d = u - v; d = d * d; break;
                    }
                    *yp++ = clampf(d, lo, hi);
                }
            }
    return TT_OK;
}

/* op 144 UNARY_F32 (fwd_float.unary_f32): n; x, y; kind (0 identity, 1 RSQRT = 1 / sqrt, 2 SQRT, 3 ABS, 4 NEG),
 * lo, hi (RELU, RELU6, RELU_N1_TO_1 are the identity and their clamp) */
static int op_unary(tt_rd *r, tt_mem *m) {
    int32_t n = rd_i32(r);
    const float *x = (const float *)rd_ref(r, m, (int64_t)n * 4);
    float *y = (float *)rd_ref(r, m, (int64_t)n * 4);
    int32_t kind = rd_i32(r);
    float lo = rd_f32(r), hi = rd_f32(r);
    if (r->bad || !x || !y) return TT_ERR_BOUNDS;
    if (kind < 0 || kind > 4) return TT_ERR_ARGS;
    for (int32_t i = 0; i < n; i++) {
        float v = x[i];
        union { float f; uint32_t u; } bits;
        switch (kind) {
        case 1: v = 1.0f / tt_sqrtf(v); break;
        case 2: v = tt_sqrtf(v); break;
        case 3: bits.f = v; bits.u &= 0x7fffffffu; v = bits.f; break;   /* np.abs clears the sign bit (-0 -> +0) */
        case 4: v = -v; break;
        default: break;
        }
        y[i] = clampf(v, lo, hi);
    }
    return TT_OK;
}

/* op 145 MEAN_F32 (fwd_float.mean_f32): nx, n_out, n_red; x, y; kept shape[4] and strides[4], reduced
 * shape[4] and strides[4] (element strides in x). y[k] = (((x_r0 + x_r1) + x_r2) + ...) / n_red, the reduced
 * elements r in row-major order of the reduced shape (np.cumsum's order, starting at the first element). */
static int op_mean(tt_rd *r, tt_mem *m) {
    int32_t nx = rd_i32(r), n_out = rd_i32(r), n_red = rd_i32(r);
    if (nx < 0 || n_out < 0 || n_red <= 0) return TT_ERR_ARGS;
    const float *x = (const float *)rd_ref(r, m, (int64_t)nx * 4);
    float *y = (float *)rd_ref(r, m, (int64_t)n_out * 4);
    int32_t k1, k2, k3, k4;
    const int32_t *kn = rd_arr(r, &k1), *ks = rd_arr(r, &k2), *rn = rd_arr(r, &k3), *rs = rd_arr(r, &k4);
    if (r->bad || !x || !y) return TT_ERR_BOUNDS;
    if (k1 != MAXD || k2 != MAXD || k3 != MAXD || k4 != MAXD || count4(kn) != n_out || count4(rn) != n_red ||
        span4(kn, ks) < 0 || span4(rn, rs) < 0) return TT_ERR_ARGS;
    if (n_out && span4(kn, ks) + span4(rn, rs) - 1 > nx) return TT_ERR_BOUNDS;
    int32_t o = 0;
    for (int32_t k0 = 0; k0 < kn[0]; k0++)
        for (int32_t k1_ = 0; k1_ < kn[1]; k1_++)
            for (int32_t k2_ = 0; k2_ < kn[2]; k2_++)
                for (int32_t k3_ = 0; k3_ < kn[3]; k3_++) {
                    const float *xb = x + k0 * ks[0] + k1_ * ks[1] + k2_ * ks[2] + k3_ * ks[3];
                    float s = 0.0f;
                    int32_t first = 1;
                    for (int32_t r0 = 0; r0 < rn[0]; r0++)
                        for (int32_t r1 = 0; r1 < rn[1]; r1++)
                            for (int32_t r2 = 0; r2 < rn[2]; r2++) {
                                const float *xr = xb + r0 * rs[0] + r1 * rs[1] + r2 * rs[2];
                                for (int32_t r3 = 0; r3 < rn[3]; r3++) {
                                    s = first ? xr[r3 * rs[3]] : s + xr[r3 * rs[3]];
                                    first = 0;
                                }
                            }
                    y[o++] = s / (float)n_red;
                }
    return TT_OK;
}

/* op 146 QUANTIZE_F32_S8 (fwd_float.quantize_f32_s8): n; x, y int8; scale, zp.
 * y = saturate(round half away from zero (x / scale) + zp); NaN -> -128 (never converted to an integer) */
static int op_quantize(tt_rd *r, tt_mem *m) {
    int32_t n = rd_i32(r);
    const float *x = (const float *)rd_ref(r, m, (int64_t)n * 4);
    int8_t *y = (int8_t *)rd_ref(r, m, n);
    float scale = rd_f32(r);
    int32_t zp = rd_i32(r);
    if (r->bad || !x || !y) return TT_ERR_BOUNDS;
    for (int32_t i = 0; i < n; i++) {
        float q = x[i] / scale;
        if (q != q) { y[i] = -128; continue; }
        q = tt_round_away(q);
        if (q < -512.0f) q = -512.0f;                          /* far outside int8 whatever zp is */
        if (q > 512.0f) q = 512.0f;
        y[i] = (int8_t)tt_clamp((int32_t)q + zp, -128, 127);
    }
    return TT_OK;
}

/* op 147 RESIZE_BILINEAR_F32 (fwd_float.resize_bilinear_f32): h, w, c, oh, ow; x, y; y0[oh], y1[oh], fy[oh],
 * x0[ow], x1[ow], fx[ow] (source rows/columns and fractions, computed by the encoder as the reference does).
 * y = a (1 - fy) (1 - fx) + b fy (1 - fx) + c (1 - fy) fx + d fy fx, evaluated left to right. */
static int op_resize_bilinear(tt_rd *r, tt_mem *m) {
    int32_t h = rd_i32(r), w = rd_i32(r), c = rd_i32(r), oh = rd_i32(r), ow = rd_i32(r);
    if (h < 0 || w < 0 || c < 0 || oh < 0 || ow < 0) return TT_ERR_ARGS;
    const float *x = (const float *)rd_ref(r, m, (int64_t)h * w * c * 4);
    float *y = (float *)rd_ref(r, m, (int64_t)oh * ow * c * 4);
    int32_t n[6];
    const int32_t *y0 = rd_arr(r, &n[0]), *y1 = rd_arr(r, &n[1]);
    const float *fy = rd_farr(r, &n[2]);
    const int32_t *x0 = rd_arr(r, &n[3]), *x1 = rd_arr(r, &n[4]);
    const float *fx = rd_farr(r, &n[5]);
    if (r->bad || !x || !y) return TT_ERR_BOUNDS;
    if (n[0] != oh || n[1] != oh || n[2] != oh || n[3] != ow || n[4] != ow || n[5] != ow) return TT_ERR_ARGS;
    for (int32_t i = 0; i < oh; i++) if (y0[i] < 0 || y0[i] >= h || y1[i] < 0 || y1[i] >= h) return TT_ERR_BOUNDS;
    for (int32_t j = 0; j < ow; j++) if (x0[j] < 0 || x0[j] >= w || x1[j] < 0 || x1[j] >= w) return TT_ERR_BOUNDS;
    for (int32_t i = 0; i < oh; i++) {
        const float *r0 = x + (int64_t)y0[i] * w * c, *r1 = x + (int64_t)y1[i] * w * c;
        float wy = fy[i], vy = 1.0f - fy[i];
        for (int32_t j = 0; j < ow; j++) {
            float wx = fx[j], vx = 1.0f - fx[j];
            const float *a = r0 + x0[j] * c, *b = r1 + x0[j] * c, *cc = r0 + x1[j] * c, *d = r1 + x1[j] * c;
            float *yp = y + ((int64_t)i * ow + j) * c;
            for (int32_t k = 0; k < c; k++) {
                float v = a[k] * vy * vx + b[k] * wy * vx;
                v = v + cc[k] * vy * wx;
                yp[k] = v + d[k] * wy * wx;
            }
        }
    }
    return TT_OK;
}

/* op 148 PAD_F32 (fwd_float.pad_f32): nx, ny; x, y; shape[4], before[4], out[4]; value.
 * y = value everywhere, then x copied in at offset `before` (row-major, 4 dimensions). */
static int op_pad(tt_rd *r, tt_mem *m) {
    int32_t nx = rd_i32(r), ny = rd_i32(r);
    if (nx < 0 || ny < 0) return TT_ERR_ARGS;
    const float *x = (const float *)rd_ref(r, m, (int64_t)nx * 4);
    float *y = (float *)rd_ref(r, m, (int64_t)ny * 4);
    int32_t k1, k2, k3;
    const int32_t *s = rd_arr(r, &k1), *bf = rd_arr(r, &k2), *o = rd_arr(r, &k3);
    float value = rd_f32(r);
    if (r->bad || !x || !y) return TT_ERR_BOUNDS;
    if (k1 != MAXD || k2 != MAXD || k3 != MAXD || count4(s) != nx || count4(o) != ny) return TT_ERR_ARGS;
    for (int d = 0; d < MAXD; d++) if (s[d] < 0 || bf[d] < 0 || (int64_t)bf[d] + s[d] > o[d]) return TT_ERR_ARGS;
    for (int32_t i = 0; i < ny; i++) y[i] = value;
    const float *xp = x;
    for (int32_t i0 = 0; i0 < s[0]; i0++)
        for (int32_t i1 = 0; i1 < s[1]; i1++)
            for (int32_t i2 = 0; i2 < s[2]; i2++) {
                float *yr = y + (((int64_t)(i0 + bf[0]) * o[1] + i1 + bf[1]) * o[2] + i2 + bf[2]) * o[3] + bf[3];
                for (int32_t i3 = 0; i3 < s[3]; i3++) yr[i3] = *xp++;
            }
    return TT_OK;
}

/* op 149 AVGPOOL_F32 (fwd_float.avgpool_f32): h, w, c, oh, ow; x, y; kh, kw, sh, sw, pt, pl, lo, hi.
 * acc = the (0, 0) tap, + the other taps in (ky, kx) order (a padding tap adds +0); / the number of taps
 * inside the image (as a float); clamp. */
static int op_avgpool(tt_rd *r, tt_mem *m) {
    int32_t h = rd_i32(r), w = rd_i32(r), c = rd_i32(r), oh = rd_i32(r), ow = rd_i32(r);
    if (h < 0 || w < 0 || c < 0 || oh < 0 || ow < 0) return TT_ERR_ARGS;
    const float *x = (const float *)rd_ref(r, m, (int64_t)h * w * c * 4);
    float *y = (float *)rd_ref(r, m, (int64_t)oh * ow * c * 4);
    int32_t kh = rd_i32(r), kw = rd_i32(r), sh = rd_i32(r), sw = rd_i32(r), pt = rd_i32(r), pl = rd_i32(r);
    float lo = rd_f32(r), hi = rd_f32(r);
    if (r->bad || !x || !y) return TT_ERR_BOUNDS;
    if (kh <= 0 || kw <= 0) return TT_ERR_ARGS;
    for (int32_t oy = 0; oy < oh; oy++)
        for (int32_t ox = 0; ox < ow; ox++)
            for (int32_t k = 0; k < c; k++) {
                float acc = 0.0f;
                int32_t count = 0;
                for (int32_t ky = 0; ky < kh; ky++) {
                    int32_t iy = oy * sh - pt + ky;
                    for (int32_t kx = 0; kx < kw; kx++) {
                        int32_t ix = ox * sw - pl + kx;
                        int inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
                        float v = inside ? x[((int64_t)iy * w + ix) * c + k] : 0.0f;
                        acc = ky == 0 && kx == 0 ? v : acc + v;
                        count += inside;
                    }
                }
                y[((int64_t)oy * ow + ox) * c + k] = clampf(acc / (float)count, lo, hi);
            }
    return TT_OK;
}

/* r == NULL asks whether the op is known (TT_OK) without running it */
/* op 150 GROUP_NORM_F32 (fwd_float.group_norm_f32): hw, c, groups; x, y, gamma (or none), beta (or none); eps,
 * lo, hi. The converter's GroupNorm chain in one kernel, the chain's float32 operations in its order. Per group
 * (channels [g cg, (g + 1) cg)), its elements in (pixel, channel) order: m = (first + next + ...) / n (MEAN);
 * v = the same sum of (x - m) * (x - m), / n; r = 1 / sqrt(v + eps); y = ((x - m) * r) * gamma + beta, clamped.
 * A group reads and writes only its own channels, so y may be x itself. */
static int op_group_norm(tt_rd *r, tt_mem *m) {
    int32_t hw = rd_i32(r), c = rd_i32(r), groups = rd_i32(r);
    if (hw <= 0 || c <= 0 || groups <= 0 || c % groups) return TT_ERR_ARGS;
    const float *x = (const float *)rd_ref(r, m, (int64_t)hw * c * 4);
    float *y = (float *)rd_ref(r, m, (int64_t)hw * c * 4);
    const float *gamma = (const float *)rd_ref(r, m, (int64_t)c * 4);
    const float *beta = (const float *)rd_ref(r, m, (int64_t)c * 4);
    float eps = rd_f32(r), lo = rd_f32(r), hi = rd_f32(r);
    if (r->bad || !x || !y) return TT_ERR_BOUNDS;
    const int32_t cg = c / groups;
    const float n = (float)((int64_t)hw * cg);
    for (int32_t g = 0; g < groups; g++) {
        const float *xg = x + (int64_t)g * cg;
        float *yg = y + (int64_t)g * cg;
        float s = 0.0f;
        for (int32_t p = 0; p < hw; p++)
            for (int32_t j = 0; j < cg; j++)
                s = (p == 0 && j == 0) ? xg[0] : s + xg[(int64_t)p * c + j];
        const float mean = s / n;
        float q = 0.0f;
        for (int32_t p = 0; p < hw; p++)
            for (int32_t j = 0; j < cg; j++) {
                float d = xg[(int64_t)p * c + j] - mean;
                d = d * d;
                q = (p == 0 && j == 0) ? d : q + d;
            }
        const float rs = 1.0f / tt_sqrtf(q / n + eps);
        for (int32_t p = 0; p < hw; p++)
            for (int32_t j = 0; j < cg; j++) {
                float v = (xg[(int64_t)p * c + j] - mean) * rs;
                if (gamma) v = v * gamma[g * cg + j];
                if (beta) v = v + beta[g * cg + j];
                yg[(int64_t)p * c + j] = clampf(v, lo, hi);
            }
    }
    return TT_OK;
}

int tt_fwd_float_op(int32_t op, tt_rd *r, tt_mem *m) {
    switch (op) {
    case 140: return r ? op_conv2d(r, m) : TT_OK;
    case 141: return r ? op_dwconv(r, m) : TT_OK;
    case 142: return r ? op_fc(r, m) : TT_OK;
    case 143: return r ? op_binary(r, m) : TT_OK;
    case 144: return r ? op_unary(r, m) : TT_OK;
    case 145: return r ? op_mean(r, m) : TT_OK;
    case 146: return r ? op_quantize(r, m) : TT_OK;
    case 147: return r ? op_resize_bilinear(r, m) : TT_OK;
    case 148: return r ? op_pad(r, m) : TT_OK;
    case 149: return r ? op_avgpool(r, m) : TT_OK;
    case 150: return r ? op_group_norm(r, m) : TT_OK;
    default: return TT_ERR_OP;
    }
}
