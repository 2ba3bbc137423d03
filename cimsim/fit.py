"""``python -m cimsim.fit``: the command of :mod:`cimsim.device.fit_command` (fit a device model to measured cells, or validate fitted families against them)."""
import sys

from cimsim.device.fit_command import main

if __name__ == "__main__":
    sys.exit(main())
