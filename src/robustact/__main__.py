import sys

from robustact.cli import main

sys.exit(main())
