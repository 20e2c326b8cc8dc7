/* The interpreter: runs a step program (or a range of its instructions) over an arena and a model buffer,
 * plus the core ops every program has: copies, ReLU masks, the float classifier head, the loss, the
 * non-finite check and the optimizers. Numpy twins: device/step/core.py (same operations, same order). */
#include "tt.h"

/* ---- exp/log in float32, no libm: the numpy twin evaluates the same expressions (core.py: expf, logf) */
static float bits_to_float(uint32_t u) { union { uint32_t u; float f; } v; v.u = u; return v.f; }
static uint32_t float_to_bits(float f) { union { uint32_t u; float f; } v; v.f = f; return v.u; }

float tt_expf(float x) {
    if (x < -87.0f) x = -87.0f;
    if (x > 88.0f) x = 88.0f;
    float n = tt_round_away(x * 1.44269504f);                    /* x = n ln2 + r, |r| <= ln2 / 2 */
    float r = x - n * 0.693145752f;                              /* ln2 split hi + lo: n * hi is exact */
    r = r - n * 1.42860677e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.166666672f + r * (0.0416666679f + r * (0.00833333377f + r * 0.00138888892f)))));
    return p * bits_to_float((uint32_t)((int32_t)n + 127) << 23);
}

float tt_logf(float x) {                                        /* x >= 1 here (a softmax denominator) */
    uint32_t u = float_to_bits(x);
    float k = (float)((int32_t)((u >> 23) & 0xff) - 127);
    float mant = bits_to_float((u & 0x007fffffu) | 0x3f800000u); /* [1, 2) */
    float t = (mant - 1.0f) / (mant + 1.0f), t2 = t * t;
    float s = 2.0f * t * (1.0f + t2 * (0.333333343f + t2 * (0.2f + t2 * (0.142857149f + t2 * (0.111111112f + t2 * (0.0909090936f + t2 * 0.0769230798f))))));
    return k * 0.693147182f + s;
}

/* op 1 COPY: bytes; src, dst */
static int op_copy(tt_rd *r, tt_mem *m) {
    int32_t n = rd_i32(r);
    const uint8_t *s = rd_ref(r, m, n);
    uint8_t *d = rd_ref(r, m, n);
    if (r->bad) return TT_ERR_BOUNDS;
    for (int32_t i = 0; i < n; i++) d[i] = s[i];
    return TT_OK;
}

/* op 2 MASK_S8: n; src int8, dst bits (np.packbits order: first element in the most significant bit), n, lo, hi:
 * then lo, hi: bit = lo < y < hi (the ReLU/ReLU6 derivative from its int8 output). op 3 MASK_F32: on floats. */
static int op_mask(tt_rd *r, tt_mem *m, int is_float) {
    int32_t n = rd_i32(r);
    const uint8_t *s = rd_ref(r, m, (int64_t)n * (is_float ? 4 : 1));
    uint8_t *d = rd_ref(r, m, (n + 7) / 8);
    if (r->bad) return TT_ERR_BOUNDS;
    /* a byte at a time: its 8 elements' bits shifted in, first element ending in the most significant bit */
    if (is_float) {
        float lo = rd_f32(r), hi = rd_f32(r);
        const float *y = (const float *)s;
        if (r->bad) return TT_ERR_ARGS;
        for (int32_t b = 0; b < (n + 7) / 8; b++) {
            uint32_t v = 0;
            for (int32_t k = 0; k < 8; k++) {
                int32_t i = 8 * b + k;
                v = (v << 1) | (uint32_t)(i < n && y[i] > lo && y[i] < hi);
            }
            d[b] = (uint8_t)v;
        }
    } else {
        int32_t lo = rd_i32(r), hi = rd_i32(r);
        const int8_t *y = (const int8_t *)s;
        if (r->bad) return TT_ERR_ARGS;
        const int32_t full = n / 8;
        for (int32_t b = 0; b < full; b++) {
            const int8_t *yy = y + 8 * (int64_t)b;
            uint32_t v = 0;
            for (int32_t k = 0; k < 8; k++) v = (v << 1) | (uint32_t)((yy[k] > lo) & (yy[k] < hi));
            d[b] = (uint8_t)v;
        }
        if (n % 8) {
            uint32_t v = 0;
            for (int32_t k = 0; k < 8; k++) {
                int32_t i = 8 * full + k;
                v = (v << 1) | (uint32_t)(i < n && y[i] > lo && y[i] < hi);
            }
            d[full] = (uint8_t)v;
        }
    }
    return TT_OK;
}

/* op 4 HEAD: cin, cout; x, w, b, logits; scale, zp.
 * logits[o] = sum_i (float(x[i] - zp) * scale) * w[o, i] (i in order, from 0) + b[o]
 * x: the saved int8 pooled features; w (Cout, Cin), b (Cout,) the float32 classifier in the arena. */
static int op_head(tt_rd *r, tt_mem *m) {
    int32_t cin = rd_i32(r), cout = rd_i32(r);
    const int8_t *x = (const int8_t *)rd_ref(r, m, cin);
    const float *w = (const float *)rd_ref(r, m, (int64_t)cin * cout * 4);
    const float *b = (const float *)rd_ref(r, m, (int64_t)cout * 4);
    float *y = (float *)rd_ref(r, m, (int64_t)cout * 4);
    float scale = rd_f32(r);
    int32_t zp = rd_i32(r);
    if (r->bad) return TT_ERR_BOUNDS;
    for (int32_t o = 0; o < cout; o++) {
        float acc = 0.0f;
        for (int32_t i = 0; i < cin; i++) acc += ((float)((int32_t)x[i] - zp) * scale) * w[(int64_t)o * cin + i];
        y[o] = acc + b[o];
    }
    return TT_OK;
}

/* op 5 SOFTMAX_CE: n; logits, dlogits. loss = log(sum e) - (z_label - max); d = e / sum - onehot.
 * A non-finite loss ends the step (nothing is updated). */
static int op_softmax_ce(tt_rd *r, tt_mem *m) {
    int32_t n = rd_i32(r);
    const float *z = (const float *)rd_ref(r, m, (int64_t)n * 4);
    float *d = (float *)rd_ref(r, m, (int64_t)n * 4);
    if (r->bad) return TT_ERR_BOUNDS;
    int32_t label = m->io->label;
    if (label < 0 || label >= n) return TT_ERR_ARGS;
    float mx = z[0];
    for (int32_t i = 1; i < n; i++) if (z[i] > mx) mx = z[i];
    float s = 0.0f;
    for (int32_t i = 0; i < n; i++) { d[i] = tt_expf(z[i] - mx); s += d[i]; }
    float loss = tt_logf(s) - (z[label] - mx);
    m->io->loss = loss;
    if (!tt_isfinite(loss) || !tt_isfinite(mx)) { m->skip = 1; return TT_OK; }
    for (int32_t i = 0; i < n; i++) d[i] = d[i] / s - (i == label ? 1.0f : 0.0f);
    return TT_OK;
}

/* op 6 CHECK_FINITE: n; g. A NaN/inf gradient ends the step before any update (one check per gradient,
 * all of them before the first optimizer op) */
static int op_check(tt_rd *r, tt_mem *m) {
    int32_t n = rd_i32(r);
    const float *g = (const float *)rd_ref(r, m, (int64_t)n * 4);
    if (r->bad) return TT_ERR_BOUNDS;
    for (int32_t i = 0; i < n; i++) if (!tt_isfinite(g[i])) { m->skip = 1; return TT_OK; }
    return TT_OK;
}

/* op 7 SGD: n; p, g, buf; momentum. torch.optim.SGD: buf = g on the first update, else buf = mu buf + g;
 * p -= lr * buf. op 8 ADAM: n; p, g, m1, m2; beta1, beta2, 1 - beta1, 1 - beta2 (rounded from double), eps; torch.optim.Adam with io->lr = lr / (1 - b1^t):
 * m1 = b1 m1 + (1 - b1) g; m2 = b2 m2 + ((1 - b2) g) g; p -= lr * m1 / (sqrt(m2) / sqrt_c2 + eps) */
static int op_sgd(tt_rd *r, tt_mem *m) {
    int32_t n = rd_i32(r);
    float *p = (float *)rd_ref(r, m, (int64_t)n * 4);
    const float *g = (const float *)rd_ref(r, m, (int64_t)n * 4);
    float *buf = (float *)rd_ref(r, m, (int64_t)n * 4);
    float mu = rd_f32(r), lr = m->io->lr;
    if (r->bad) return TT_ERR_BOUNDS;
    for (int32_t i = 0; i < n; i++) {
        buf[i] = m->io->first ? g[i] : buf[i] * mu + g[i];
        p[i] = p[i] - lr * buf[i];
    }
    return TT_OK;
}

static int op_adam(tt_rd *r, tt_mem *m) {
    int32_t n = rd_i32(r);
    float *p = (float *)rd_ref(r, m, (int64_t)n * 4);
    const float *g = (const float *)rd_ref(r, m, (int64_t)n * 4);
    float *m1 = (float *)rd_ref(r, m, (int64_t)n * 4);
    float *m2 = (float *)rd_ref(r, m, (int64_t)n * 4);
    float b1 = rd_f32(r), b2 = rd_f32(r), a1 = rd_f32(r), a2 = rd_f32(r), eps = rd_f32(r);
    float lr = m->io->lr, sc2 = m->io->sqrt_c2;
    if (r->bad) return TT_ERR_BOUNDS;
    for (int32_t i = 0; i < n; i++) {
        m1[i] = m1[i] * b1 + a1 * g[i];
        m2[i] = m2[i] * b2 + a2 * g[i] * g[i];
        p[i] = p[i] - lr * m1[i] / (tt_sqrtf(m2[i]) / sc2 + eps);
    }
    return TT_OK;
}

/* r == NULL asks whether the op is known (TT_OK) without running it */
int tt_core_op(int32_t op, tt_rd *r, tt_mem *m) {
    switch (op) {
    case 1: return r ? op_copy(r, m) : TT_OK;
    case 2: return r ? op_mask(r, m, 0) : TT_OK;
    case 3: return r ? op_mask(r, m, 1) : TT_OK;
    case 4: return r ? op_head(r, m) : TT_OK;
    case 5: return r ? op_softmax_ce(r, m) : TT_OK;
    case 6: return r ? op_check(r, m) : TT_OK;
    case 7: return r ? op_sgd(r, m) : TT_OK;
    case 8: return r ? op_adam(r, m) : TT_OK;
    case 9: if (r) m->io->applied = 1; return TT_OK;   /* APPLIED: the last instruction of a step */
    default: return TT_ERR_OP;
    }
}

static int tt_dispatch(int32_t op, tt_rd *r, tt_mem *m) {
    if (op < 100) return tt_core_op(op, r, m);
    if (op < 140) return tt_fwd_int8_op(op, r, m);
    if (op < 170) return tt_fwd_float_op(op, r, m);
    if (op < 200) return tt_fwd_extra_op(op, r, m);
    return tt_bwd_op(op, r, m);
}

/* Run instructions [first, last) of the program (last < 0: to the end). Returns TT_OK or an error code;
 * *where gets the failing instruction's index. Allocates nothing; touches only arena, model and io. */
int tt_run(const int32_t *prog, int64_t nwords, uint8_t *arena, int64_t arena_bytes, const uint8_t *model,
           int64_t model_bytes, tt_io *io, int32_t first, int32_t last, int32_t *where) {
    *where = -1;
    if (nwords < 5 || prog[0] != TT_MAGIC || prog[1] != TT_VERSION) return TT_ERR_MAGIC;
    if (arena_bytes < prog[3]) return TT_ERR_ARENA;
    if (model_bytes != prog[4]) return TT_ERR_MODEL;
    int32_t n_instr = prog[2];
    if (last < 0 || last > n_instr) last = n_instr;
    tt_mem m = { arena, model, arena_bytes, model_bytes, io, 0 };
    io->applied = 0;
    const int32_t *w = prog + 5, *end = prog + nwords;
    for (int32_t k = 0; k < last; k++) {
        if (w + 2 > end || w[1] < 0 || w + 2 + w[1] > end) { *where = k; return TT_ERR_ARGS; }
        if (k >= first) {
            tt_rd r = { w + 2, w + 2 + w[1], 0 };
            int32_t op = w[0];
            int rc = tt_dispatch(op, &r, &m);
            if (rc == TT_OK && r.bad) rc = TT_ERR_BOUNDS;
            if (rc != TT_OK) { *where = k; return rc; }
            if (m.skip) return TT_OK;
        }
        w += 2 + w[1];
    }
    return TT_OK;
}

/* the opcodes this build implements (the host checks a program against it before any step) */
int tt_has_op(int32_t op) {
    return tt_dispatch(op, 0, 0) == TT_OK;
}
