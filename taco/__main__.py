"""`python -m taco`: the same as the `taco` console script."""

import sys

from taco.cli import main

sys.exit(main())
