"""``python -m cimsim.writeverify``: the command moved to the training package (it reads run folders)."""
import sys

print("python -m cimsim.writeverify: the write-verify budget of trained runs is "
      "`python -m training.writeverify_budget` (same options)", file=sys.stderr)
sys.exit(2)
