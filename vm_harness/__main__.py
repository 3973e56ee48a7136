"""``python -m vm_harness build|up|down|scenario NAME|scenarios``."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
