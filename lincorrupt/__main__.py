"""``python -m lincorrupt``: the ``lincorrupt`` command line (:mod:`lincorrupt.commands`)."""

import sys

from lincorrupt.commands import main

if __name__ == "__main__":  # importing this module runs nothing
    sys.exit(main())
