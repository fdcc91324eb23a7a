"""``python -m stream.cli`` is ``pulse``."""

import sys

from stream.cli import main

sys.exit(main())
