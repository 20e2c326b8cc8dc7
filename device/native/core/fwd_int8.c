/* Forward kernels: .tflite ops whose first input is int8. Numpy twins: device/step/fwd_int8.py */
#include "tt.h"

int tt_fwd_int8_op(int32_t op, tt_rd *r, tt_mem *m) {
    switch (op) {
    default: return TT_ERR_OP;
    }
}
