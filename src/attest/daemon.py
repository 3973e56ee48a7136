"""attestd: the node daemon. For now it starts, reports its version and exits cleanly."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from attest import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attestd", description="attest node daemon")
    parser.add_argument("--version", action="version", version=f"attestd {__version__}")
    parser.parse_args(argv)
    print(f"attestd {__version__}: the HTTP API is not part of this release yet", file=sys.stderr)
    return 0


def run() -> None:
    sys.exit(main())
