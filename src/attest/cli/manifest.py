"""`attest manifest ...` (filled in by the manifest capability)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("manifest", help="(not yet available)")
    p.set_defaults(func=lambda args: 2)
