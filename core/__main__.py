"""``python -m flowspec``: the ``flowspec`` command, so that ``torchrun -m flowspec train ...`` works."""
import sys

from flowspec.cli import main

if __name__ == "__main__":
    sys.exit(main())
