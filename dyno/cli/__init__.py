"""The ``dyno`` command: argument parsing only; each subcommand calls a library function.

Each subcommand lives in its own module here exposing ``register(subparsers)``, which adds a parser
whose ``func`` default takes the parsed arguments and returns an exit code (or None for 0).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
from typing import Any, Iterator

from dyno.errors import DynoError

# Modules that register subcommands, in the order ``dyno --help`` lists them.
_COMMAND_MODULES = (
    "dyno.cli.zoo_commands",
    "dyno.cli.cuts_command",
    "dyno.cli.codec_commands",
    "dyno.cli.analysis_commands",
    "dyno.cli.export_command",
    "dyno.cli.simulate_command",
    "dyno.cli.serve_command",
    "dyno.cli.run_command",
    "dyno.cli.demo_command",
    "dyno.cli.bench_commands",
    "dyno.cli.ground_command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dyno",
        description="Adaptive device-to-cloud split inference for CNNs (DynO). "
        "A device runs the head of a CNN, packs the activation at the split point into few bits, "
        "and a cloud server finishes the inference.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an unexpected error (also: DYNO_DEBUG=1)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
            module.register(subparsers)
        except ModuleNotFoundError as error:
            if error.name == name:  # that part is not built yet
                continue
            if error.name == "torch" and _device_install():  # dyno[device]: the commands that need no torch
                continue
            raise
    return parser


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM (``kill``, ``timeout``) as ``SystemExit(143)`` while a command runs, so its ``with`` blocks
    still undo what it set up: a killed ``dyno bench`` left its two network namespaces behind. Only where
    signals can be set (the main thread); restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _device_install() -> bool:
    """Whether this is a device install (``dyno[device]``: onnxruntime, no torch)."""
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is None
    except ValueError:  # sys.modules["torch"] is None: torch blocked on purpose
        return True


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure is one line on stderr and a non-zero exit code.

    A ``DynoError`` says what was wrong and what to do; anything else is a bug or an environment
    problem (a full disk, a permission): one line naming it and a hint to rerun with ``--debug``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get("DYNO_DEBUG", "") not in ("", "0")
    try:
        with _terminate_as_exit():
            code = args.func(args)
    except DynoError as error:
        print(f"dyno {args.command}: error: {error}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as error:
        if error.name != "torch" or debug:
            raise
        print(f"dyno {args.command}: error: this needs torch, which this install does not have (a device install: "
              "`dyno run/profile --backend onnxruntime` work here); install 'dyno[full]' for the rest",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dyno {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as error:  # the environment: a missing directory, a full disk, a permission
        if debug:
            raise
        where = f": {error.filename}" if error.filename else ""
        print(f"dyno {args.command}: error: {error.strerror or error}{where}", file=sys.stderr)
        return 1
    except Exception as error:
        if debug:
            raise
        what = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        print(f"dyno {args.command}: unexpected error: {' '.join(what.split())} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
