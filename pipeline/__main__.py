"""``python -m pipeline`` is the ``flowprior`` command."""

import sys

from pipeline.cli import main

sys.exit(main())
