"""An app module that ends the interpreter as it is imported (a check must not take that for
a pass)."""

import sys

print("importing exiting_app")
sys.exit(0)
