"""CLI entry points: ``modelgate seal|unseal|verify|rekey|keygen`` (dispatched by cli.py).

Each takes the argparse Namespace and returns an exit status; errors are raised
from the one tree (cli.py prints them).  Keys come from key files only here, and
are never printed.
"""

from __future__ import annotations

import argparse
import sys

from modelgate.storage import seal_ops
from modelgate.storage.keys import load_key, write_key_file


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def seal(args: argparse.Namespace) -> int:
    s = seal_ops.seal(args.src, args.dest, load_key(args.key_file))
    _say(f"sealed {s.files} files ({_mib(s.bytes)}) from {args.src} into {args.dest}")
    return 0


def unseal(args: argparse.Namespace) -> int:
    s = seal_ops.unseal(args.src, args.dest, load_key(args.key_file))
    _say(f"unsealed {s.files} files ({_mib(s.bytes)}) into {args.dest} (plaintext on disk)")
    return 0


def verify(args: argparse.Namespace) -> int:
    s = seal_ops.verify(args.src, load_key(args.key_file))
    print(f"ok: {args.src}: {s.files} files, {_mib(s.bytes)} authenticated")
    return 0


def rekey(args: argparse.Namespace) -> int:
    s = seal_ops.rekey(args.src, load_key(args.key_file), load_key(args.new_key_file))
    _say(f"rekeyed {args.src}: {s.files + 1} data keys rewrapped under the new key (weights untouched)")
    return 0


def keygen(args: argparse.Namespace) -> int:
    path = write_key_file(args.dest)
    _say(f"wrote a new 32-byte key to {path} (mode 0400)")
    return 0
