"""``python -m lincorrupt``: the ``lincorrupt`` command line (:mod:`lincorrupt.commands`)."""

import sys

from lincorrupt.commands import main

sys.exit(main())
