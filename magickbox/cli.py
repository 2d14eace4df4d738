"""``magickbox`` command line (the DICOM processing node; commands arrive in later releases)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="magickbox",
        description="HOPS DICOM processing node: a storage SCP whose called AE title selects a "
                    "processing bucket.  Not implemented yet in this release.")
    parser.add_argument("--version", action="version", version=f"magickbox {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
