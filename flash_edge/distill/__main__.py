"""``python -m flash_edge.distill train --out out/distill --seed 0`` (see ``flash_edge/distill/cli.py``)."""

import sys

from .cli import main

sys.exit(main())
