"""A local stand-in of the Slack Web API and incoming webhooks: records what is posted, can answer 429 or 5xx first,
can post and then lose the answer, and answers ``conversations.history``/``replies``/``list`` from what was posted."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Posted:
    channel: str
    text: str
    blocks: list[dict[str, Any]] | None
    ts: str
    thread_ts: str | None
    """The message this one replies to, or None for a new message."""
    metadata: dict[str, Any] | None = None


def channel_id(name: str) -> str:
    """The ID Slack gives a channel (``C`` and letters), stable for a name."""
    return "C" + hashlib.sha1(name.encode()).hexdigest()[:10].upper()


@dataclass
class SlackStandIn:
    """``url`` is the Web API base URL; ``failures`` are (status, headers, body) answers given first.

    ``lose_answers``: that many of the next ``chat.postMessage`` calls are posted, then left without an
    answer for ``hang_seconds`` (past the client's timeout) and the connection closed, as when Slack's
    response is lost.
    """

    known_channels: set[str] = field(default_factory=lambda: {"#llm-costs", "#agent-loops", "#llm-oncall"})
    posted: list[Posted] = field(default_factory=list)
    failures: list[tuple[int, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    requests: int = 0
    lose_answers: int = 0
    hang_seconds: float = 3.0
    calls: list[str] = field(default_factory=list)
    """The Web API methods called, in order."""
    post_seconds: float = 0.0
    """How long each ``chat.postMessage`` takes to answer (Slack's own latency)."""

    def __post_init__(self) -> None:
        standin = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.do_POST()

            def do_POST(self) -> None:
                standin.requests += 1
                url = urlsplit(self.path)
                args: dict[str, Any] = dict(parse_qsl(url.query))
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    args.update(json.loads(body or "{}"))
                else:
                    args.update(parse_qsl(body))
                    for name in ("blocks", "metadata"):
                        if isinstance(args.get(name), str):
                            args[name] = json.loads(args[name])
                if url.path.startswith("/services/"):
                    self._webhook(url.path, args)
                    return
                method = url.path.rsplit("/", 1)[-1]
                standin.calls.append(method)
                if standin.failures:
                    status, headers, answer = standin.failures.pop(0)
                elif method == "chat.postMessage":
                    self._post(args)
                    return
                elif method == "conversations.list":
                    channels = [{"id": channel_id(c), "name": c.lstrip("#")} for c in sorted(standin.known_channels)]
                    status, headers, answer = 200, {}, {"ok": True, "channels": channels}
                elif method in ("conversations.history", "conversations.replies"):
                    status, headers, answer = 200, {}, standin._read(method, args)
                else:
                    status, headers, answer = 200, {}, {"ok": False, "error": "unknown_method"}
                self._answer(status, headers, json.dumps(answer).encode(), "application/json")

            def _post(self, args: dict[str, Any]) -> None:
                time.sleep(standin.post_seconds)
                channel = standin._channel_name(args.get("channel", ""))
                if channel not in standin.known_channels:
                    answer: dict[str, Any] = {"ok": False, "error": "channel_not_found"}
                else:
                    with lock:
                        ts = standin._next_ts()
                        thread = args.get("thread_ts") or None
                        standin.posted.append(
                            Posted(channel, args.get("text", ""), args.get("blocks"), ts, thread, args.get("metadata"))
                        )
                        lose = standin.lose_answers > 0
                        standin.lose_answers -= lose
                    if lose:  # posted, but the answer never arrives
                        time.sleep(standin.hang_seconds)
                        self.close_connection = True
                        return
                    answer = {"ok": True, "channel": channel_id(channel), "ts": ts}
                self._answer(200, {}, json.dumps(answer).encode(), "application/json")

            def _webhook(self, path: str, args: dict[str, Any]) -> None:
                """Incoming webhooks answer ``ok`` as text, or the error's name with a 4xx/5xx status."""
                channel = "#" + path.rsplit("/", 1)[-1]
                if standin.failures:
                    status, headers, answer = standin.failures.pop(0)
                    body = str(answer.get("error", ""))
                elif channel not in standin.known_channels:
                    status, headers, body = 404, {}, "no_service"
                else:
                    with lock:
                        ts = standin._next_ts()
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

        self._last_ts = 0.0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _next_ts(self) -> str:
        """A message ts as Slack makes them: the time it was posted, unique in the channel."""
        self._last_ts = max(round(time.time(), 6), round(self._last_ts + 0.000001, 6))
        return f"{self._last_ts:.6f}"

    def _channel_name(self, channel: str) -> str:
        return next((c for c in self.known_channels if channel_id(c) == channel), channel)

    def _read(self, method: str, args: dict[str, str]) -> dict[str, Any]:
        """``conversations.history`` (new messages, newest first) or ``replies`` (a thread, oldest first), by ID."""
        channel = self._channel_name(args.get("channel", ""))
        if channel not in self.known_channels or channel == args.get("channel"):
            return {"ok": False, "error": "channel_not_found"}  # Slack reads channels by ID only
        oldest = float(args.get("oldest", 0))
        in_channel = [p for p in self.posted if p.channel == channel and float(p.ts) >= oldest]
        if method == "conversations.history":
            found = [p for p in reversed(in_channel) if p.thread_ts is None]
        else:
            found = [p for p in in_channel if p.ts == args.get("ts") or p.thread_ts == args.get("ts")]
        with_metadata = args.get("include_all_metadata") in ("1", "true", "True")
        messages = [
            {
                "type": "message", "ts": p.ts, "text": p.text,
                **({"thread_ts": p.thread_ts} if p.thread_ts else {}),
                **({"metadata": p.metadata} if with_metadata and p.metadata else {}),
            }
            for p in found
        ]  # fmt: skip
        return {"ok": True, "messages": messages, "has_more": False}

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
