"""`python -m dreamctl`: what torchrun and `--nproc` start in each rank.

A rank that has finished its command (its files closed, its process group left together with the other ranks)
ends with os._exit, as multiprocessing's worker processes do, skipping the interpreter's and C++'s teardown:
torch's distributed machinery could abort there ("terminate called without an active exception", SIGABRT), and the
launcher then reported a finished run as failed.
"""

import os
import sys

from dreamctl.cli import run
from dreamctl.training.launched import launched_ranks

status = run()
if launched_ranks() is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
sys.exit(status)
