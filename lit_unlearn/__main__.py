"""``python -m lit_unlearn`` runs the ``lit-unlearn`` command line."""

import sys

from lit_unlearn.cli import main

if __name__ == "__main__":
    sys.exit(main())
