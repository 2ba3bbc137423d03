"""``python -m cimsim.fit``: the command of :mod:`cimsim.device.fit` (fit a device model to measured cells)."""
import sys

from cimsim.device.fit import main

if __name__ == "__main__":
    sys.exit(main())
