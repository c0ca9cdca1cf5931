"""Patterns the documentation tests share."""

import re

# A path that exists only on the machine that wrote the page: a temporary folder, a home or
# work directory, or the team's shared folder beside the checkout.
MACHINE_PATH = re.compile(r"(?<![\w.])(?:/tmp/|/work/|/home/|/Users/)|\.\./shared\b")
