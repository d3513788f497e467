"""``python -m robustact``: run the command line (:func:`robustact.cli.main`)."""

import sys

from robustact.cli import main

sys.exit(main())
