"""``python -m pifs_jax.cli``: the ``pifs-jax`` command."""

import sys

from pifs_jax.cli import main

sys.exit(main())
