/* Backward kernels of the graph ops. Numpy twins: device/step/bwd.py. */
#include "tt.h"

int tt_bwd_op(int32_t op, tt_rd *r, tt_mem *m) {
    switch (op) {
    default: return TT_ERR_OP;
    }
}
