"""``fusion-emotion`` console command.

Each subcommand lives in its own module exposing ``register(subparsers)``. A module
imports what its role (a pyproject extra) installs at its top, so a command whose role
is not installed is listed as unavailable, naming the extra; imports of other roles'
packages stay inside the functions that need them, marked ``# optional: [extra]``.
This module is the top layer (docs/architecture.md): it imports the command modules,
none of them imports it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that register subcommands, in help order, with the commands they register.
COMMAND_MODULES = {
    "fusion_emotion.export.cli": ("export",),
    "fusion_emotion.server.launcher": ("triton",),
    "fusion_emotion.client.cli": ("predict",),
    "fusion_emotion.frontend.cli": ("serve",),
    "fusion_emotion.deploy.cli": ("package", "deploy", "undeploy"),
    "fusion_emotion.ops.bench": ("bench",),
    "fusion_emotion.ops.perf_analyzer": ("perf-analyzer",),
    "fusion_emotion.ops.stream_bench": ("bench-stream",),
    "fusion_emotion.ops.quantize": ("quantize",),
    "fusion_emotion.client.timeline_cli": ("timeline",),
    "fusion_emotion.client.stream_cli": ("stream",),
    "fusion_emotion.ops.evaluate": ("evaluate",),
    "fusion_emotion.deploy.transform_cli": ("batch",),  # the client's routes plus SageMaker Batch Transform
    "fusion_emotion.client.search": ("search",),
    "fusion_emotion.ui.cli": ("ui",),
}

# Which `pip install fusion-emotion[...]` extra brings a missing third-party module.
EXTRA_FOR_MODULE = {
    "av": "models",
    "scipy": "models",
    "cv2": "models",
    "onnxruntime": "models",
    "fastapi": "serving",
    "uvicorn": "serving",
    "pytriton": "triton",
    "matplotlib": "plots",
    "websockets": "client",
    "psutil": "client",
    "tritonclient": "client",
    "httpx": "client",
    "boto3": "client",
    "botocore": "client",
    "torch": "export",
    "torchvision": "export",
    "transformers": "export",
    "onnx": "export",
    "skimage": "dev",
}


def _needs(missing: str) -> str:
    extra = EXTRA_FOR_MODULE.get(missing.split(".")[0], "serving")
    return f"needs `pip install fusion-emotion[{extra}]` (module {missing} is not installed)"


def _unavailable(sub: argparse._SubParsersAction, module: str, missing: str) -> None:
    """Commands of a role that is not installed: say which extra brings them instead of failing the CLI."""
    message = _needs(missing)
    for name in COMMAND_MODULES[module]:
        if name in sub.choices:
            continue
        p = sub.add_parser(name, help=f"(unavailable: {message})", add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=lambda _args, m=message, n=name: _fail(n, m))


def _fail(name: str, message: str) -> int:
    sys.stderr.write(f"fusion-emotion {name}: {message}\n")
    return 2


# Commands whose run imports only their own module: some modules import scipy/PyAV when registering
# (seconds on a loaded machine), which a quick `search` should not pay for. Others import every module.
FAST_COMMANDS = {"search": "fusion_emotion.client.search", "batch": "fusion_emotion.deploy.transform_cli"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusion-emotion", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in (FAST_COMMANDS[command],) if command in FAST_COMMANDS else COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
            module.register(sub)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that part of the product is not installed in this tree
            if exc.name and not exc.name.startswith("fusion_emotion"):
                _unavailable(sub, name, exc.name)  # a role's dependency is not installed (e.g. a client install)
                continue
            raise
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
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:  # an import a handler defers (`# optional: [extra]`) is not installed
        if exc.name and not exc.name.startswith("fusion_emotion"):
            return _fail(args.command, _needs(exc.name))
        raise


if __name__ == "__main__":
    sys.exit(main())
