/* Forward kernels: the .tflite ops (int8 and float islands). Numpy twins: device/step/fwd.py. */
#include "tt.h"

int tt_fwd_op(int32_t op, tt_rd *r, tt_mem *m) {
    switch (op) {
    default: return TT_ERR_OP;
    }
}
