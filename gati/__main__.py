"""`python -m gati ...`: the same command as `gati ...`."""
import sys

from gati.cli import main

sys.exit(main())
