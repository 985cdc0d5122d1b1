"""Arguments the runtime commands share: the bearer token, the emulated device and link, optional outputs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dyno.cli._args import (
    input_file,
    output_file,
)
from dyno.errors import ConfigError


def token(args: argparse.Namespace) -> str | None:
    """--token-file, else $DYNO_TOKEN (a token on the command line would show in `ps`). A token file
    that holds no token is an error: it must never turn authentication off."""
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read --token-file: {error}") from error
        if not token:
            raise ConfigError(f"--token-file {args.token_file} holds no token; put the bearer token in it "
                              "(an empty file would turn authentication off)")
        return token
    token = os.environ.get("DYNO_TOKEN")
    if token is not None and not token.strip():
        raise ConfigError("$DYNO_TOKEN is set but empty; unset it for no authentication, or set the token")
    return token.strip() if token else None


def add_token(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token-file", metavar="F", type=input_file,
                        help="file holding the bearer token (default: $DYNO_TOKEN if set; none)")


def optional_output(text: str) -> Path | None:
    return output_file(text) if text else None


def add_device_and_link(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tier", default=None,
                   help="emulated device: an absolute tier as in dyno demo (EfficientNet-Lite0 in 49 ms: low, 12: "
                   "mid, 3: high, scaled by its latency on the machine that profiled the plan), native, or a "
                   "number (a slowdown against this machine)")
    p.add_argument("--device-emulation", choices=("pad", "cgroup"), default="pad",
                   help="slow the device by padding each run (default) or by a cgroup v1 CPU quota")
    p.add_argument("--trace", type=input_file,
                   help="uplink bandwidth trace file to replay (a token bucket in the client)")
