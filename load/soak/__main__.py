"""`python -m load.soak`: the local soak (load/soak/cli.py)."""
import sys

from load.soak.cli import main

sys.exit(main())
