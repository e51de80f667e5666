"""``python -m irepa`` (also what ``torchrun -m irepa`` and ``accelerate launch -m irepa`` run)."""

import sys

from irepa.cli.main import main

sys.exit(main())
