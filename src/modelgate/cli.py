"""The ``modelgate`` console script.  Parses arguments, builds the one Config,
and hands off to the module that owns the command.  Nothing else lives here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from modelgate.errors import ModelGateError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelgate", description="OpenAI-compatible LLM server and gateway")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway (no --config: an embedded default that works offline)")
    s.add_argument("--config", "-c")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--workers", type=int, help="processes sharing the port (default: server.workers)")

    w = sub.add_parser("worker", help="serve one local model behind TGI-compatible and OpenAI routes")
    w.add_argument("--model", required=True, help="a transformers directory or a sealed model")
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--port", type=int, default=8080)
    w.add_argument("--model-id")
    w.add_argument("--key-file", help="key for a sealed model")
    w.add_argument("--device", default="auto")
    w.add_argument("--dtype", default="auto")
    w.add_argument("--task", choices=["chat", "embedding"], default="chat")
    w.add_argument("--max-batch-size", type=int, default=32)
    w.add_argument("--device-map", help="from_pretrained's device_map: auto, cpu, cuda:0 (needs accelerate)")
    w.add_argument(
        "--quantization", help='a quantization_config as JSON, e.g. {"quant_method": "bitsandbytes", ...}'
    )
    w.add_argument("--attn-implementation", help="sdpa, eager, flash_attention_2, ...")
    w.add_argument("--api-keys-file", help="keys clients must send, one a line (MODELGATE_* env is ignored)")
    w.add_argument("--api-keys-env", help="name of a variable holding comma-separated keys")
    w.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve a non-loopback --host without a key (refused otherwise)",
    )

    c = sub.add_parser("check", help="probe every endpoint; exit 1 if a model has no healthy endpoint")
    c.add_argument("--config", "-c")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")

    for name, helptext in (
        ("seal", "encrypt a model directory into a sealed model"),
        ("unseal", "decrypt a sealed model back into a directory"),
    ):
        x = sub.add_parser(name, help=helptext)
        x.add_argument("src")
        x.add_argument("dest")
        x.add_argument("--key-file", required=True)
    v = sub.add_parser("verify", help="check every byte of a sealed model against its key")
    v.add_argument("src")
    v.add_argument("--key-file", required=True)
    r = sub.add_parser("rekey", help="rewrap a sealed model's data keys under a new key (no re-encryption)")
    r.add_argument("src")
    r.add_argument("--key-file", required=True)
    r.add_argument("--new-key-file", required=True)
    k = sub.add_parser("keygen", help="write a new random 32-byte key file (mode 0400)")
    k.add_argument("dest")

    d = sub.add_parser("demo-model", help="write a tiny random-weight model with a real tokenizer")
    d.add_argument("dest")
    d.add_argument("--kind", choices=["chat", "embedding"], default="chat")
    d.add_argument("--size", choices=["tiny", "small"], default="tiny")
    d.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ModelGateError as exc:
        print(f"modelgate {args.command}: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "serve":
        from modelgate.config import load_config
        from modelgate.engine.defaults import with_embedded_default
        from modelgate.logs import setup_logging
        from modelgate.serve import serve

        config = load_config(args.config)
        setup_logging(config.server.log_level)  # building the demo model logs
        config = with_embedded_default(config)
        return serve(config, host=args.host, port=args.port, workers=args.workers)
    if cmd == "worker":
        from modelgate.worker.server import run_worker

        return run_worker(args)
    if cmd == "check":
        from modelgate.check import run_check
        from modelgate.config import load_config

        return run_check(load_config(args.config), as_json=args.json)
    if cmd in ("seal", "unseal", "verify", "rekey", "keygen"):
        from modelgate.storage import commands

        result: int = getattr(commands, cmd)(args)
        return result
    if cmd == "demo-model":
        from modelgate.engine.demo_model import write_demo_model

        out = write_demo_model(args.dest, kind=args.kind, size=args.size, seed=args.seed)
        print(out)
        return 0
    raise AssertionError(cmd)
