"""``python -m mathlens``: the command line without the installed ``mathlens`` script (a checkout on PYTHONPATH)."""

import sys

from mathlens.cli import main

sys.exit(main())
