"""``python -m mathlens``: the command line without the installed ``mathlens`` script (a checkout on PYTHONPATH)."""

import sys

from mathlens.cli import main

if __name__ == "__main__":
    sys.exit(main())
