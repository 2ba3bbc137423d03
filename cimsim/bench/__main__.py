import sys

from cimsim.bench.cli import main

sys.exit(main())
