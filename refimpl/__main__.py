"""``python -m refimpl``: run the reference router."""

import sys

from refimpl.router.main import main

sys.exit(main(prog="python -m refimpl"))
