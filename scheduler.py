"""`python scheduler.py`: the daemon, the same as `opskit scheduler`.

The jobs are wired in opskit/engine/scheduler.py (inside the package, so an installed opskit has
them too); their logic lives in opskit/engine/daemon.py.
"""

import sys

from opskit.cli import main

if __name__ == "__main__":
    sys.argv[1:1] = ["scheduler"]
    main()
