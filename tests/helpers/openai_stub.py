"""A tiny OpenAI-compatible server on 127.0.0.1 whose failures a test scripts: it answers
`/v1/models` and streams `/v1/chat/completions` (one character per token, with log-probs, and the
usage when asked), and can answer with an HTTP error, stall, or refuse a key first. The real server test is
test_openai_backend.py's llama_cpp.server; this one makes the failures that server cannot."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROGRAM = "```python\nprint(18)\n```"


class OpenAIStub:
    def __init__(
        self,
        *,
        model: str = "cap",
        key: str | None = None,
        text: str = PROGRAM,
        delay_s: float = 0.0,
        context: int | None = None,
    ):
        self.model, self.key, self.text, self.delay_s = model, key, text, delay_s
        self.context = context  # refuse, as vLLM words it, a prompt and max_tokens over this many tokens
        self.failures: list[tuple[int, str] | float] = []  # next replies: (status, message) or a stall in seconds
        self.requests: list[dict] = []
        self.in_flight = self.most_in_flight = 0
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _json(self, status: int, body: dict, headers: dict | None = None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if stub.key is None or self.headers.get("Authorization") == f"Bearer {stub.key}":
                    return True
                self._json(401, {"error": {"message": "Invalid API key"}})
                return False

            def do_GET(self):
                if self.path != "/v1/models":
                    self._json(404, {"detail": "not found"})
                elif self._authorised():
                    self._json(200, {"object": "list", "data": [{"id": stub.model, "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub._lock:
                    stub.requests.append(body)
                    failure = stub.failures.pop(0) if stub.failures else None
                if not self._authorised():
                    return
                if isinstance(failure, float):
                    time.sleep(failure)
                elif failure is not None:
                    status, message = failure
                    self._json(status, {"error": {"message": message}}, {"Retry-After": "0"} if status == 429 else None)
                    return
                prompt = stub.usage(body, "")["prompt_tokens"]
                if stub.context is not None and prompt + body["max_tokens"] > stub.context:
                    message = (
                        f"This model's maximum context length is {stub.context} tokens. However, you requested "
                        f"{prompt + body['max_tokens']} tokens ({prompt} in the messages, {body['max_tokens']} in "
                        "the completion). Please reduce the length of the messages or completion."
                    )
                    self._json(400, {"object": "error", "message": message, "type": "BadRequestError", "code": 400})
                    return
                self._stream(body)

            def _stream(self, body):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                text = stub.text.replace("18", str(body.get("seed", 18)))  # the seed shows in the answer
                stub._count(+1)
                writing = True
                try:
                    for i, char in enumerate(text):
                        time.sleep(stub.delay_s)
                        if i == len(text) - 1:  # before the client can see the end and send the next request
                            stub._count(-1)
                            writing = False
                        self._event(
                            {
                                "choices": [
                                    {
                                        "index": 0,
                                        "delta": {"content": char},
                                        "finish_reason": None,
                                        "logprobs": {"content": [{"token": char, "logprob": -0.25}]},
                                    }
                                ]
                            }
                        )
                    self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                    if (body.get("stream_options") or {}).get("include_usage"):
                        self._event({"choices": [], "usage": stub.usage(body, text)})
                    self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: fine
                    if writing:
                        stub._count(-1)
                self.close_connection = True

            def _event(self, chunk):
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def usage(body: dict, text: str) -> dict:
        """The stream's last chunk when asked for usage: a token per character, as it streams."""
        prompt = sum(len(message["content"]) for message in body["messages"])
        return {"prompt_tokens": prompt, "completion_tokens": len(text), "total_tokens": prompt + len(text)}

    def _count(self, change: int) -> None:
        """Track requests whose text is still being written (the most at once is `most_in_flight`)."""
        with self._lock:
            self.in_flight += change
            self.most_in_flight = max(self.most_in_flight, self.in_flight)

    def __enter__(self) -> OpenAIStub:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
