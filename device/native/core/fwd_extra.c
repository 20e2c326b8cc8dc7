/* Forward kernels: .tflite builtins image classifiers made by other tools end or pad with. Numpy twins: device/step/fwd_extra.py */
#include "tt.h"

int tt_fwd_extra_op(int32_t op, tt_rd *r, tt_mem *m) {
    switch (op) {
    default: return TT_ERR_OP;
    }
}
