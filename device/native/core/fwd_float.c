/* Forward kernels: .tflite ops whose first input is float32 (the float islands). Numpy twins: device/step/fwd_float.py */
#include "tt.h"

int tt_fwd_float_op(int32_t op, tt_rd *r, tt_mem *m) {
    switch (op) {
    default: return TT_ERR_OP;
    }
}
