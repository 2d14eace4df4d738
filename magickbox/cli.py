"""``magickbox``: the HOPS DICOM processing node.

    magickbox serve --data-dir DIR [--dicom-port PORT] [--http-port PORT] [--config FILE]

Exit codes: 0 normal shutdown, 2 configuration error (the message names the key).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Sequence

from stability_collector.metrics import ConfigError

from . import __version__
from .classify import RulesError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="magickbox",
        description="HOPS DICOM processing node: a storage SCP whose called AE title selects a processing bucket.")
    parser.add_argument("--version", action="version", version=f"magickbox {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("serve", help="run the node (DICOM receiver, study completion, status API)")
    p.add_argument("--config", metavar="FILE", help="TOML or YAML config file (flags override it)")
    p.add_argument("--data-dir", metavar="DIR", help="archive, job store and buckets live here")
    p.add_argument("--dicom-port", type=int, metavar="PORT", help="DICOM port (default 11112; 0 = any free)")
    p.add_argument("--dicom-host", metavar="ADDR", help="listen address (default 0.0.0.0)")
    p.add_argument("--http-port", type=int, metavar="PORT", help="HTTP port (default 8000; 0 = any free)")
    p.add_argument("--node-name", help="metric path node (default: host name)")
    p.add_argument("--graphite", metavar="HOST:PORT", help="send node metrics to this carbon")
    p.add_argument("--quiet-seconds", type=float, help="study complete after this long without instances")
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    from .config import load_node_config
    from .node import Node

    overrides: dict[str, Any] = {
        "data_dir": args.data_dir,
        "dicom.port": args.dicom_port,
        "dicom.host": args.dicom_host,
        "http.port": args.http_port,
        "node_name": args.node_name,
        "graphite.address": args.graphite,
        "dicom.quiet_seconds": args.quiet_seconds,
    }
    config = load_node_config(args.config, overrides)
    Node(config).run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    logging.basicConfig(level=max(logging.DEBUG, logging.INFO - 10 * args.verbose),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return {"serve": cmd_serve}[args.command](args)
    except (ConfigError, RulesError) as exc:
        print(f"magickbox: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
