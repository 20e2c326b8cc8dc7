/* The C core's shared header: memory bases, the instruction reader, fixed-point and float helpers.
 *
 * A step program (device/step/, Python) is a flat array of int32 words:
 *   header  TT_MAGIC, TT_VERSION, n_instr, arena_bytes, model_bytes
 *   then per instruction: opcode, n_words (of the arguments), the arguments.
 * An argument is one of: an int32; a float32 (its bit pattern); a float64 (two words, low first); an array
 * (a length word, then the elements, int32 or float32 bits); a reference to memory (two words: base, byte
 * offset), base 0 = the arena (read-write, planned), 1 = the model buffer (the .tflite bytes, read-only,
 * the flash), -1 = none. The order of an op's arguments is its schema in device/step/ (one place).
 * Freestanding C99: no libc, no allocator; everything a step touches is in the arena or the model buffer.
 */
#ifndef TT_H
#define TT_H

#include <stdint.h>
#include <stddef.h>

#define TT_MAGIC 0x31505454 /* "TTP1" */
#define TT_VERSION 1

enum { TT_OK = 0, TT_ERR_MAGIC = 1, TT_ERR_OP = 2, TT_ERR_ARENA = 3, TT_ERR_MODEL = 4, TT_ERR_ARGS = 5,
       TT_ERR_BOUNDS = 6 };

/* what the host passes in and reads back at each step (the firmware's mailbox) */
typedef struct {
    int32_t label;        /* in: the sample's class */
    int32_t first;        /* in: 1 on the first applied update (SGD's momentum buffer starts as the gradient) */
    float lr;             /* in: SGD: the step's learning rate; Adam: lr / (1 - beta1^t) */
    float sqrt_c2;        /* in: Adam: sqrt(1 - beta2^t) */
    float loss;           /* out: the sample's cross-entropy loss */
    int32_t applied;      /* out: 1 if the update was applied, 0 if the loss or a gradient was not finite */
} tt_io;

typedef struct {
    uint8_t *arena;
    const uint8_t *model;
    int64_t arena_bytes, model_bytes;
    tt_io *io;
    int32_t skip;         /* set by a check op: the rest of the program up to the next TT_OP_END_SKIP is skipped */
} tt_mem;

typedef struct {
    const int32_t *w, *end;
    int bad;              /* set when an argument reads past the instruction or out of its memory */
} tt_rd;

static inline int32_t rd_i32(tt_rd *r) {
    if (r->w >= r->end) { r->bad = 1; return 0; }
    return *r->w++;
}
static inline float rd_f32(tt_rd *r) {
    union { int32_t i; float f; } u;
    u.i = rd_i32(r);
    return u.f;
}
static inline double rd_f64(tt_rd *r) {
    union { uint64_t u; double d; } v;
    uint32_t lo = (uint32_t)rd_i32(r), hi = (uint32_t)rd_i32(r);
    v.u = ((uint64_t)hi << 32) | lo;
    return v.d;
}
/* an array argument: returns its elements (n of them) and moves past them */
static inline const int32_t *rd_arr(tt_rd *r, int32_t *n) {
    int32_t k = rd_i32(r);
    const int32_t *p = r->w;
    if (k < 0 || r->w + k > r->end) { r->bad = 1; *n = 0; return r->w; }
    *n = k;
    r->w += k;
    return p;
}
static inline const float *rd_farr(tt_rd *r, int32_t *n) { return (const float *)rd_arr(r, n); }
/* a memory reference of `bytes` bytes; NULL for base -1; bounds-checked against the region */
static inline uint8_t *rd_ref(tt_rd *r, const tt_mem *m, int64_t bytes) {
    int32_t base = rd_i32(r), off = rd_i32(r);
    if (base == -1) return NULL;
    if (off < 0 || bytes < 0) { r->bad = 1; return NULL; }
    if (base == 0 && (int64_t)off + bytes <= m->arena_bytes) return m->arena + off;
    if (base == 1 && (int64_t)off + bytes <= m->model_bytes) return (uint8_t *)(m->model + off);
    r->bad = 1;
    return NULL;
}

/* numpy's round (ties to even) of a float64, |x| < 2^52 */
static inline double tt_round_even(double x) {
    const double big = 4503599627370496.0;                    /* 2^52 */
    volatile double t;
    if (x >= 0) { t = x + big; return t - big; }
    t = -x + big;
    return -(t - big);
}
/* an int32 conv bias, channel c: kind 0 reads int32 values; kind 1 encodes a float32 trainable bias as
 * `convert merge` does (device/requant.py bias_int32): round half to even of double(b) / double(scale[c]) */
static inline int32_t tt_bias_i32(const uint8_t *b, int32_t kind, const float *scale, int32_t c) {
    if (!b) return 0;
    if (kind == 0) return ((const int32_t *)b)[c];
    double q = tt_round_even((double)((const float *)b)[c] / (double)scale[c]);
    return q >= 2147483647.0 ? INT32_MAX : q <= -2147483648.0 ? INT32_MIN : (int32_t)q;
}

/* ---- TFLite fixed point (device/kernels/_fixed_point.py) ------------------------------------------- */
/* SaturatingRoundingDoublingHighMul then RoundingDivideByPOT: x * m * 2^(shift - 31), ties away from 0 */
static inline int32_t tt_mbqm(int32_t x, int32_t m, int32_t shift) {
    int32_t left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
    int32_t xs = (int32_t)((uint32_t)x << left);               /* wraps like the reference */
    int64_t ab = (int64_t)xs * (int64_t)m;
    int64_t nudge = ab >= 0 ? (1LL << 30) : (1 - (1LL << 30));
    int64_t s = ab + nudge;
    int32_t hi = (int32_t)(s >= 0 ? s >> 31 : -((-s) >> 31));  /* C division truncates toward zero */
    if (xs == INT32_MIN && m == INT32_MIN) hi = INT32_MAX;
    if (right == 0) return hi;
    int32_t mask = (int32_t)((1u << right) - 1);
    int32_t rem = hi & mask, thr = (mask >> 1) + (hi < 0);
    return (hi >> right) + (rem > thr);
}
static inline int32_t tt_clamp(int32_t v, int32_t lo, int32_t hi) { return v < lo ? lo : v > hi ? hi : v; }

/* ---- float helpers without libm (the numpy reference computes the same operations in the same order) - */
static inline float tt_fabsf(float x) { return x < 0 ? -x : x; }
/* C's round() for float32 (ties away from zero), as round_half_away: floor(|x|) + (|x| - floor >= 0.5) */
static inline float tt_round_away(float x) {
    float a = tt_fabsf(x);
    if (a >= 8388608.0f) return x;                             /* already an integer */
    float r = (float)(int32_t)a;
    r = r + ((a - r) >= 0.5f ? 1.0f : 0.0f);
    return x < 0 ? -r : r;
}
static inline int tt_isfinite(float x) {
    union { float f; uint32_t u; } v;
    v.f = x;
    return (v.u & 0x7f800000u) != 0x7f800000u;
}
static inline float tt_sqrtf(float x) { return __builtin_sqrtf(x); }  /* one IEEE instruction, correctly rounded */

/* ---- op dispatch: each C file handles its own opcode range and returns TT_ERR_OP for an opcode not its own;
 * called with r == NULL it only answers whether it knows the op (TT_OK). An op reads its arguments in its
 * schema's order: sizes first (so references can be bounds-checked), then references, then parameters;
 * it checks r->bad before touching memory. */
int tt_core_op(int32_t op, tt_rd *r, tt_mem *m);      /* 1..99    interp.c: copies, masks, loss, optimizer, checks */
int tt_fwd_int8_op(int32_t op, tt_rd *r, tt_mem *m);  /* 100..139 fwd_int8.c: .tflite ops whose first input is int8 */
int tt_fwd_float_op(int32_t op, tt_rd *r, tt_mem *m); /* 140..169 fwd_float.c: .tflite ops whose first input is float32 */
int tt_fwd_extra_op(int32_t op, tt_rd *r, tt_mem *m); /* 170..199 fwd_extra.c: SOFTMAX, LOGISTIC, HARD_SWISH ... */
int tt_bwd_op(int32_t op, tt_rd *r, tt_mem *m);       /* 200..299 bwd.c: backward of the graph ops */

#endif
