"""``python -m clip4str`` = the ``clip4str`` command."""

import sys

from clip4str.cli import main

sys.exit(main())
