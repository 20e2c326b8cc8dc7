/* Forward kernels: .tflite builtins image classifiers made by other tools end or pad with: int8 SOFTMAX,
 * LOGISTIC (as a 256-entry table) and HARD_SWISH, as LiteRT's reference kernels compute them.
 * Numpy twins: device/step/fwd_extra.py (the ops) and device/kernels/activations.py (the arithmetic).
 * The encoder precomputes every table and multiplier; these functions compute from their arguments only. */
#include "tt.h"

/* ---- gemmlowp fixed point, int32 ---------------------------------------------------------------------- */
static int32_t add32(int32_t a, int32_t b) { return (int32_t)((uint32_t)a + (uint32_t)b); }  /* wraps */
static int32_t sub32(int32_t a, int32_t b) { return (int32_t)((uint32_t)a - (uint32_t)b); }

/* SaturatingRoundingDoublingHighMul: (a * b + nudge) / 2^31, C truncation */
static int32_t srdhm32(int32_t a, int32_t b) {
    if (a == INT32_MIN && b == INT32_MIN) return INT32_MAX;
    int64_t ab = (int64_t)a * (int64_t)b;
    int64_t s = ab + (ab >= 0 ? (1LL << 30) : (1 - (1LL << 30)));
    return (int32_t)(s >= 0 ? s >> 31 : -((-s) >> 31));
}
/* RoundingDivideByPOT, 0 <= e <= 31: arithmetic shift right, ties away from zero */
static int32_t rdbpot32(int32_t x, int32_t e) {
    int32_t mask = (int32_t)((1u << e) - 1u);
    int32_t rem = x & mask, thr = (mask >> 1) + (x < 0);
    return (x >> e) + (rem > thr);
}
/* SaturatingRoundingMultiplyByPOT<e>, e > 0: x * 2^e, saturated */
static int32_t sat_shl32(int32_t x, int32_t e) {
    int32_t thr = (int32_t)((1u << (31 - e)) - 1u);
    if (x > thr) return INT32_MAX;
    if (x < -thr) return INT32_MIN;
    return (int32_t)((uint32_t)x << e);
}
static int32_t clz32(uint32_t v) {
    int32_t n = 0;
    while (n < 32 && !(v & 0x80000000u)) { v <<= 1; n++; }
    return n;
}
/* one_over_one_plus_x_for_x_in_0_1: Q0.31 a -> 1 / (1 + a), Newton-Raphson in Q2.29 on d = (1 + a) / 2 */
static int32_t one_over_one_plus_x(int32_t a) {
    int64_t s = (int64_t)a + INT32_MAX;                         /* RoundingHalfSum(a, One) */
    int32_t half_den = (int32_t)((s + (s >= 0 ? 1 : -1)) / 2);
    int32_t x = add32(1515870810, srdhm32(half_den, -1010580540));   /* 48/17 - 32/17 d */
    for (int i = 0; i < 3; i++) {
        int32_t one_minus = sub32(1 << 29, srdhm32(half_den, x));   /* 1 - d x, Q2.29 */
        x = add32(x, sat_shl32(srdhm32(x, one_minus), 2));         /* x + x (1 - d x), Q4 -> Q2 */
    }
    return sat_shl32(x, 1);                                      /* (x / 2) in Q1 -> Q0 */
}

/* op 170 SOFTMAX_S8: rows, depth; x, y (int8, rows x depth); exps[256] (Q0.31 exp of the difference -k).
 * Per row: max; sum of RDBPOT(exp, 12) (Q12.19); recip = 1 / (sum / 2^(12 - headroom)) in Q0.31;
 * y = RDBPOT(SRDHM(recip, exp), 12 - headroom + 23) - 128, saturated. A row whose sum reaches 512 (that
 * shift above 31) is refused: LiteRT's reference kernel aborts there (TFLITE_CHECK). y may be x (each element is read
 * before it is written, after the row's max and sum). */
static int op_softmax_s8(tt_rd *r, tt_mem *m) {
    int32_t rows = rd_i32(r), depth = rd_i32(r);
    int64_t n = (int64_t)rows * depth;
    const int8_t *x = (const int8_t *)rd_ref(r, m, n);
    int8_t *y = (int8_t *)rd_ref(r, m, n);
    int32_t ne;
    const int32_t *exps = rd_arr(r, &ne);
    if (r->bad) return TT_ERR_BOUNDS;
    if (ne != 256 || rows < 0 || depth <= 0) return TT_ERR_ARGS;
    for (int32_t i = 0; i < rows; i++) {
        const int8_t *xr = x + (int64_t)i * depth;
        int8_t *yr = y + (int64_t)i * depth;
        int32_t mx = -128;
        for (int32_t c = 0; c < depth; c++) if (xr[c] > mx) mx = xr[c];
        int32_t total = 0;
        for (int32_t c = 0; c < depth; c++) total = add32(total, rdbpot32(exps[mx - xr[c]], 12));
        if (total <= 0) return TT_ERR_ARGS;                      /* the reference's sum is > 0 (exps[0] = 1) */
        int32_t headroom = clz32((uint32_t)total);
        int32_t recip = one_over_one_plus_x((int32_t)(((uint32_t)total << headroom) - 0x80000000u));
        int32_t exponent = (12 - headroom) + 31 - 8;
        if (exponent > 31) return TT_ERR_ARGS;                   /* sum >= 512: the reference aborts here */
        for (int32_t c = 0; c < depth; c++) {
            int32_t v = rdbpot32(srdhm32(recip, exps[mx - xr[c]]), exponent) - 128;
            yr[c] = (int8_t)tt_clamp(v, -128, 127);
        }
    }
    return TT_OK;
}

/* op 171 LUT_S8: n; x, y (int8); table[256]: y = table[x + 128] (LOGISTIC) */
static int op_lut_s8(tt_rd *r, tt_mem *m) {
    int32_t n = rd_i32(r);
    const int8_t *x = (const int8_t *)rd_ref(r, m, n);
    int8_t *y = (int8_t *)rd_ref(r, m, n);
    int32_t nt;
    const int32_t *t = rd_arr(r, &nt);
    if (r->bad) return TT_ERR_BOUNDS;
    if (nt != 256 || n < 0) return TT_ERR_ARGS;
    for (int32_t i = 0; i < n; i++) y[i] = (int8_t)t[(int32_t)x[i] + 128];
    return TT_OK;
}

/* ---- int16 fixed point of reference_ops::HardSwish ---------------------------------------------------- */
static int16_t wrap16(int32_t v) { return (int16_t)(uint16_t)(uint32_t)v; }
/* gemmlowp SaturatingRoundingDoublingHighMul, int16 */
static int16_t srdhm16(int16_t a, int16_t b) {
    if (a == -32768 && b == -32768) return 32767;
    int32_t ab = (int32_t)a * b;
    return (int16_t)((ab + (ab >= 0 ? (1 << 14) : 1 - (1 << 14))) / (1 << 15));
}
/* SaturatingDoublingHighMul: ab / 2^15 truncated toward zero */
static int16_t sdhm16(int16_t a, int16_t b) {
    if (a == -32768 && b == -32768) return 32767;
    return (int16_t)(((int32_t)a * b) / (1 << 15));
}
/* gemmlowp RoundingDivideByPOT on int16: the mask is (1 << e) - 1 as an int16 (all ones from e = 16 on) */
static int16_t rdbpot16(int16_t x, int32_t e) {
    if (e > 31) e = 31;                                          /* same result for any e >= 16 */
    int32_t mask = (int32_t)(((1LL << e) - 1) & 0xffff);
    if (mask >= 0x8000) mask -= 0x10000;
    int32_t rem = x & mask, thr = (mask >> 1) + (x < 0);
    return wrap16(((int32_t)x >> e) + (rem > thr));
}
/* SaturatingLeftShift: x * 2^e saturated to int16 */
static int16_t sat_shl16(int16_t x, int32_t e) {
    if (e > 40) e = 40;
    int64_t v = (int64_t)x * ((int64_t)1 << e);
    return (int16_t)(v > 32767 ? 32767 : v < -32768 ? -32768 : v);
}

/* op 172 HARD_SWISH_S8: n; x, y (int8); zi, zo, out_m16, out_e (<= 0), relu_m16, relu_e.
 * hires = (x - zi) * 2^7; pre = SRDHM16(hires, out_m16); reluish = hires rescaled by relu_m16 * 2^relu_e to
 * [-1, 1] (saturating) then mapped to [0, 1]; y = RDBPOT16(SDHM16(reluish, pre), -out_e) + zo, saturated. */
static int op_hard_swish_s8(tt_rd *r, tt_mem *m) {
    int32_t n = rd_i32(r);
    const int8_t *x = (const int8_t *)rd_ref(r, m, n);
    int8_t *y = (int8_t *)rd_ref(r, m, n);
    int32_t zi = rd_i32(r), zo = rd_i32(r), out_m16 = rd_i32(r), out_e = rd_i32(r);
    int32_t relu_m16 = rd_i32(r), relu_e = rd_i32(r);
    if (r->bad) return TT_ERR_BOUNDS;
    if (n < 0 || out_e > 0) return TT_ERR_ARGS;
    for (int32_t i = 0; i < n; i++) {
        int16_t hires = wrap16(((int32_t)x[i] - zi) * 128);
        int16_t pre = srdhm16(hires, (int16_t)out_m16);
        int16_t rl = hires;
        if (relu_e > 0) rl = sat_shl16(rl, relu_e - 1);
        rl = srdhm16(rl, (int16_t)relu_m16);
        if (relu_e > 0) rl = sat_shl16(rl, 1);
        if (relu_e < 0) rl = rdbpot16(rl, -relu_e);
        rl = (int16_t)(((int32_t)rl + (1 << 15)) >> 1);
        int16_t out = wrap16(rdbpot16(sdhm16(rl, pre), -out_e) + zo);
        y[i] = (int8_t)tt_clamp(out, -128, 127);
    }
    return TT_OK;
}

int tt_fwd_extra_op(int32_t op, tt_rd *r, tt_mem *m) {
    switch (op) {
    case 170: return r ? op_softmax_s8(r, m) : TT_OK;
    case 171: return r ? op_lut_s8(r, m) : TT_OK;
    case 172: return r ? op_hard_swish_s8(r, m) : TT_OK;
    default: return TT_ERR_OP;
    }
}
