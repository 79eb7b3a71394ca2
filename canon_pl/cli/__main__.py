"""``python -m canon_pl.cli``: the ``canon-pl`` command."""

import sys

from canon_pl.cli import main

sys.exit(main())
