"""``python -m autoprune``."""

import sys

from autoprune.cli import main

sys.exit(main())
