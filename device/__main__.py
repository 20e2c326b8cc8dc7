"""`python -m device ...`: see device/cli.py."""
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads stall busy CPUs (see train/__main__.py)

from .cli import main

sys.exit(main())
