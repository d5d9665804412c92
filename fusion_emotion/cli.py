"""``fusion-emotion`` console command.

Each subcommand lives in its own module exposing ``register(subparsers)``;
modules keep heavy imports (torch, tritonclient, boto3) inside their handlers
so ``fusion-emotion --help`` stays fast and serving never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that register subcommands, in help order.
COMMAND_MODULES = (
    "fusion_emotion.export.cli",  # export
    "fusion_emotion.server.launcher",  # triton
    "fusion_emotion.client.cli",  # predict
    "fusion_emotion.frontend.cli",  # serve
    "fusion_emotion.deploy.cli",  # package, deploy, undeploy
    "fusion_emotion.ops.bench",  # bench
    "fusion_emotion.ops.perf_analyzer",  # perf-analyzer
    "fusion_emotion.ops.stream_bench",  # bench-stream
    "fusion_emotion.ops.quantize",  # quantize
    "fusion_emotion.client.timeline_cli",  # timeline
    "fusion_emotion.client.stream_cli",  # stream
    "fusion_emotion.ops.evaluate",  # evaluate
    "fusion_emotion.client.batch",  # batch (and --transform-job)
    "fusion_emotion.client.search",  # search
)


# Commands whose run imports only their own module: some modules import scipy/PyAV when registering
# (seconds on a loaded machine), which a quick `search` should not pay for. Others import every module.
FAST_COMMANDS = {"search": "fusion_emotion.client.search", "batch": "fusion_emotion.client.batch"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusion-emotion", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in (FAST_COMMANDS[command],) if command in FAST_COMMANDS else COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that part of the product is not installed in this tree
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((w for w in words if not w.startswith("-")), None))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
