"""``python -m cimsim``: the quick start (see :mod:`cimsim.quickstart`)."""
import sys

from cimsim.quickstart import main

sys.exit(main())
