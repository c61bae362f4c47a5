"""
The client of the end-to-end tests: makes HTTP requests and prints what came back, as JSON.

Standard library only: it runs as an unprivileged user (uid 65534) under whichever interpreter
that user can execute, from a copy in a world-readable directory.

Input (JSON on stdin, or as the first argument) describes one connection::

    {"host": "10.250.0.3", "port": 80, "timeout": 20,
     "requests": [{"method": "GET", "path": "/echo?x=1",
                   "headers": [["X-Custom", "yes"]],
                   "body": null | "text" | {"repeat": "abc", "size": 8388608},
                   "chunked": false}]}

The requests are sent one after the other on one connection (C{http.client} reconnects by
itself if the server closed it; each response reports the local port it came on, so a test can
tell).  Headers are sent in the given order and case; C{Host} is added first unless given, and
C{Content-Length} (or C{Transfer-Encoding: chunked} with C{"chunked": true}) is added for a
body.  Instead of C{requests}, C{"raw": "<bytes as latin-1 text>"} sends those bytes and reads
until the server closes or C{read_timeout} passes (C{keep}: how many bytes of it to return, 64 KiB
by default).

C{{"connections": [spec, ...]}} runs several such connections one after the other in the same
process (no interpreter start-up between them) and prints C{{"connections": [result, ...]}}.

Output per connection: C{{"responses": [...], "error": null | "..."}} where each response has
C{status}, C{reason}, C{version}, C{headers} (C{[name, value]} in order, as received),
C{body_len}, C{body_sha256}, C{body} (text, when shorter than 64 KiB), C{local_port},
C{sent_body_len}, C{sent_body_sha256} and C{elapsed}.
"""

import hashlib
import http.client
import json
import socket
import sys
import time

SMALL_BODY = 64 * 1024
CHUNK = 64 * 1024


def make_body(body):
    """
    Turn a body description into bytes.

    @param body: L{None}, a text, or C{{"repeat": pattern, "size": n}} for C{n} bytes of
        C{pattern} repeated (so multi-MiB bodies are described, not passed).
    @return: the bytes, or L{None}.
    """
    if body is None:
        return None
    if isinstance(body, str):
        return body.encode("utf-8")
    unit = body["repeat"].encode("utf-8")
    size = body["size"]
    return (unit * (size // len(unit) + 1))[:size]


def _chunks(data):
    for i in range(0, len(data), CHUNK):
        yield data[i:i + CHUNK]


def _send(conn, req):
    method = req.get("method", "GET")
    headers = [tuple(h) for h in req.get("headers", [])]
    names = {name.lower() for name, _ in headers}
    body = make_body(req.get("body"))
    chunked = req.get("chunked", False)
    conn.putrequest(method, req.get("path", "/"), skip_host="host" in names,
                    skip_accept_encoding=True)
    for name, value in headers:
        conn.putheader(name, value)
    if body is not None:
        if chunked:
            if "transfer-encoding" not in names:
                conn.putheader("Transfer-Encoding", "chunked")
        elif "content-length" not in names:
            conn.putheader("Content-Length", str(len(body)))
    if body is None:
        conn.endheaders()
    elif chunked:
        conn.endheaders(_chunks(body), encode_chunked=True)
    else:
        conn.endheaders(_chunks(body))
    return body


def _response(resp, body, local_port, started):
    data = resp.read()
    result = {
        "status": resp.status,
        "reason": resp.reason,
        "version": {10: "HTTP/1.0", 11: "HTTP/1.1"}.get(resp.version, str(resp.version)),
        "headers": [[k, v] for k, v in resp.getheaders()],
        "body_len": len(data),
        "body_sha256": hashlib.sha256(data).hexdigest(),
        "local_port": local_port,
        "sent_body_len": None if body is None else len(body),
        "sent_body_sha256": None if body is None else hashlib.sha256(body).hexdigest(),
        "elapsed": round(time.monotonic() - started, 3),
    }
    if len(data) < SMALL_BODY:
        result["body"] = data.decode("utf-8", "replace")
    return result


def run_requests(spec):
    conn = http.client.HTTPConnection(spec["host"], spec["port"], timeout=spec.get("timeout", 20))
    out = {"responses": [], "error": None}
    try:
        for req in spec["requests"]:
            started = time.monotonic()
            if conn.sock is None:
                conn.connect()
            local_port = conn.sock.getsockname()[1]
            body = _send(conn, req)
            out["responses"].append(_response(conn.getresponse(), body, local_port, started))
    except Exception as e:
        out["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        conn.close()
    return out


def run_raw(spec):
    """
    Send raw bytes and read until close or C{read_timeout}.
    """
    out = {"error": None, "raw_response": "", "raw_len": 0, "closed": False, "status": None}
    data = b""
    try:
        with socket.create_connection((spec["host"], spec["port"]),
                                      timeout=spec.get("timeout", 20)) as sock:
            sock.sendall(spec["raw"].encode("latin-1"))
            deadline = time.monotonic() + spec.get("read_timeout", 5)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(left)
                try:
                    more = sock.recv(65536)
                except socket.timeout:
                    break
                if not more:
                    out["closed"] = True
                    break
                data += more
    except Exception as e:
        out["error"] = "%s: %s" % (type(e).__name__, e)
    out["raw_len"] = len(data)
    out["raw_response"] = data[:spec.get("keep", SMALL_BODY)].decode("latin-1")
    first = data.split(b"\r\n", 1)[0].split()
    if len(first) >= 2 and first[0].startswith(b"HTTP/") and first[1].isdigit():
        out["status"] = int(first[1])
    return out


def run_connection(spec):
    return run_raw(spec) if "raw" in spec else run_requests(spec)


def main(argv):
    if argv[1:] == ["--probe"]:
        # The fixture checks that this interpreter, as this user, can run us at all.
        hashlib.sha256(b"").hexdigest()
        print("ok")
        return 0
    spec = json.loads(argv[1] if len(argv) > 1 else sys.stdin.read())
    if "connections" in spec:
        result = {"connections": [run_connection(c) for c in spec["connections"]]}
    else:
        result = run_connection(spec)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
