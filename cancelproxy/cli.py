"""The command line: ``cancelproxy serve | mock-upstream | demo | audit``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .config import ConfigError, load_config

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cancelproxy", description="A reverse proxy for LLM APIs that makes Stop real."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the proxy")
    serve.add_argument("--config", default="config.yaml", help="configuration file (default: config.yaml)")
    serve.add_argument("--host", help="listen address (default: listen.host)")
    serve.add_argument("--port", type=int, help="listen port (default: listen.port)")

    mock = commands.add_parser(
        "mock-upstream",
        help="a provider that streams deterministic tokens: OpenAI chat, Responses and completions, Anthropic Messages",
        description="Serves /v1/chat/completions, /v1/responses, /v1/messages, /v1/completions and /v1/models "
        "(each also without /v1), the engine aborts POST /abort_request and DELETE /v1/stream/{id}, and what it "
        "saw at /_mock/requests and /_mock/aborts. A request's 'mock' object steers it (see the README).",
    )
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=9000)
    mock.add_argument("--tokens", type=int, default=40, help="content deltas per answer (default: 40)")
    mock.add_argument("--rate", type=float, default=20.0, help="deltas per second, 0 for no delay (default: 20)")
    mock.add_argument("--silence", type=float, default=0.0, help="seconds of silence before the first delta")

    demo = commands.add_parser("demo", help="the whole story offline: a stream started, stopped, its partial shown")
    demo.add_argument("--tokens", type=int, default=200)
    demo.add_argument("--rate", type=float, default=20.0)
    demo.add_argument("--stop-after", type=int, default=10, help="deltas to receive before pressing Stop")
    demo.add_argument(
        "--protocol",
        default="chat",
        choices=("chat", "responses", "messages", "completions"),
        help="the wire format to show it with (default: chat)",
    )

    audit = commands.add_parser("audit", help="summarise an audit trail: counts, tokens, latencies")
    audit.add_argument("file", metavar="FILE", help="the audit file (audit.path), or - for stdin")
    audit.add_argument("--since", help="only entries since an ISO timestamp, or a duration ago: 30m, 2h, 7d")
    audit.add_argument("--json", action="store_true", help="print the summary as JSON")

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "mock-upstream":
        from .mock import MockDefaults, run_mock

        run_mock(args.host, args.port, MockDefaults(tokens=args.tokens, rate=args.rate, silence_s=args.silence))
        return 0
    if args.command == "audit":
        from .audit_report import run_audit

        return run_audit(args.file, args.since, args.json)
    from .demo import run_demo

    return run_demo(protocol=args.protocol, tokens=args.tokens, rate=args.rate, stop_after=args.stop_after)


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"cancelproxy: bad config: {exc}", file=sys.stderr)
        return 2
    from .app import StoreOpenError, serve

    try:
        serve(config, host=args.host, port=args.port)
    except StoreOpenError as exc:
        print(f"cancelproxy: cannot start: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the port is taken, the audit file cannot be opened, ...
        print(f"cancelproxy: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0
