"""Lesson 7: a TCP server that serves each client in its own process.

The seed's server and client: the client sends text, the server answers it
uppercased, and "q" ends the session. concur.server runs it with the
`process` model (a process per connection); the clients below talk to it the
way the seed's client does (raw text, one reply per message, 1,024-byte
reads). Try the other models with --model, or run `concur serve` and
`concur client` in two terminals.

Run: python examples/07_tcp_server.py [--model process|prefork|hybrid|thread|async]
"""

import socket
import sys

from concur.server import start


def client(port: int, words: list[str]) -> list[str]:
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for word in [*words, "q"]:
            sock.sendall(word.encode())
            replies.append(sock.recv(1024).decode())
        assert sock.recv(1024) == b"", "the server closes the session after q"
    return replies


if __name__ == "__main__":
    model = sys.argv[sys.argv.index("--model") + 1] if "--model" in sys.argv else "process"
    with start(port=0, model=model) as server:
        print(f"serving on 127.0.0.1:{server.port} with the {model} model")
        for words in (["hello", "world"], ["straße", "Ωmega 123"]):
            print(f"client sent {[*words, 'q']}, got {client(server.port, words)}")
    print("server stopped: every child process reaped")
