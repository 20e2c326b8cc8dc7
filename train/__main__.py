import os

# Without this, OpenMP threads spin while waiting; on a shared or oversubscribed CPU (CI, a busy
# laptop) that made training 10-40x slower here. Must be set before torch loads libgomp.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .cli import main  # noqa: E402

if __name__ == "__main__":  # not when a spawned worker (sweep --jobs) re-imports this module
    raise SystemExit(main())
