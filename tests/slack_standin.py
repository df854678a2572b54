"""A local stand-in of the Slack Web API and incoming webhooks: records what is posted, can answer 429 or 5xx first."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl


@dataclass
class Posted:
    channel: str
    text: str
    blocks: list[dict[str, Any]] | None
    ts: str
    thread_ts: str | None
    """The message this one replies to, or None for a new message."""


@dataclass
class SlackStandIn:
    """``url`` is the Web API base URL; ``failures`` are (status, headers, body) answers given first."""

    known_channels: set[str] = field(default_factory=lambda: {"#llm-costs", "#agent-loops", "#llm-oncall"})
    posted: list[Posted] = field(default_factory=list)
    failures: list[tuple[int, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    requests: int = 0

    def __post_init__(self) -> None:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                standin.requests += 1
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    args = json.loads(body)
                else:
                    args = dict(parse_qsl(body))
                    if isinstance(args.get("blocks"), str):
                        args["blocks"] = json.loads(args["blocks"])
                if self.path.startswith("/services/"):
                    self._webhook(args)
                    return
                if standin.failures:
                    status, headers, answer = standin.failures.pop(0)
                elif not self.path.endswith("/chat.postMessage"):
                    status, headers, answer = 200, {}, {"ok": False, "error": "unknown_method"}
                elif args.get("channel") not in standin.known_channels:
                    status, headers, answer = 200, {}, {"ok": False, "error": "channel_not_found"}
                else:
                    ts = f"{1_700_000_000 + len(standin.posted)}.000100"
                    thread = args.get("thread_ts") or None
                    standin.posted.append(Posted(args["channel"], args.get("text", ""), args.get("blocks"), ts, thread))
                    status, headers, answer = 200, {}, {"ok": True, "channel": args["channel"], "ts": ts}
                self._answer(status, headers, json.dumps(answer).encode(), "application/json")

            def _webhook(self, args: dict[str, Any]) -> None:
                """Incoming webhooks answer ``ok`` as text, or the error's name with a 4xx/5xx status."""
                channel = "#" + self.path.rsplit("/", 1)[-1]
                if standin.failures:
                    status, headers, answer = standin.failures.pop(0)
                    body = str(answer.get("error", ""))
                elif channel not in standin.known_channels:
                    status, headers, body = 404, {}, "no_service"
                else:
                    ts = f"{1_700_000_000 + len(standin.posted)}.000100"
                    standin.posted.append(Posted(channel, args.get("text", ""), args.get("blocks"), ts, None))
                    status, headers, body = 200, {}, "ok"
                self._answer(status, headers, body.encode(), "text/html")

            def _answer(self, status: int, headers: dict[str, str], payload: bytes, content_type: str) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/"

    def webhook_url(self, channel: str) -> str:
        """The incoming-webhook URL of ``channel`` (a ``#name``)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/services/T0/B0/{channel.lstrip('#')}"

    def channels(self) -> list[str]:
        return [p.channel for p in self.posted]

    def messages(self) -> list[Posted]:
        """New messages (not thread replies)."""
        return [p for p in self.posted if p.thread_ts is None]

    def replies_to(self, message: Posted) -> list[Posted]:
        return [p for p in self.posted if p.thread_ts == message.ts]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
