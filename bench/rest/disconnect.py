"""Clients that abandon writes: the reproduction of the write wedge, as a load generator.

Opens CLIENTS raw TCP connections at a time, sends a write on each (a Patient create, an
update of one of a few shared ids, or a transaction Bundle) and resets the connection (RST,
SO_LINGER 0) at a random point: halfway through the body, 0-3 ms after the request, or after
the first byte of the response. Runs for DURATION seconds (bounded, loopback only), then
prints `ABANDONED n=<count>`.

    python3 disconnect.py http://127.0.0.1:PORT/datastore/ID/r4 PATIENT_JSON DURATION [CLIENTS]
"""

import json
import random
import socket
import struct
import sys
import threading
import time
from urllib.parse import urlsplit


def request(method, path, host, body):
    data = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/fhir+json\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    return head, data


def one(addr, host, base_path, patient, rng, n):
    shared = f"soak-{rng.randrange(8)}"
    kind = rng.randrange(4)
    if kind == 0:
        head, data = request("POST", f"{base_path}/Patient", host, patient)
    elif kind == 1:
        head, data = request("PUT", f"{base_path}/Patient/{shared}", host, dict(patient, id=shared))
    elif kind == 2:
        head, data = request("DELETE", f"{base_path}/Patient/{shared}", host, None)
    else:
        entry = {"resource": patient, "request": {"method": "POST", "url": "Patient"}}
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry] * 10}
        head, data = request("POST", base_path, host, bundle)
    s = socket.create_connection(addr, timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        point = rng.randrange(3)
        if point == 0 and data:
            s.sendall(head + data[: len(data) // 2])
        else:
            s.sendall(head + data)
            if point == 1:
                time.sleep(rng.random() * 0.003)
            else:
                s.recv(1)
    except OSError:
        pass
    finally:
        s.close()


def main():
    base, patient_file, duration = sys.argv[1], sys.argv[2], float(sys.argv[3])
    clients = int(sys.argv[4]) if len(sys.argv) > 4 else 32
    url = urlsplit(base)
    addr = (url.hostname, url.port)
    if url.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("disconnect.py only targets loopback")
    patient = json.load(open(patient_file))
    deadline = time.monotonic() + duration
    count = [0]
    lock = threading.Lock()

    def worker(seed):
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            with lock:
                count[0] += 1
                n = count[0]
            try:
                one(addr, url.netloc, url.path.rstrip("/"), patient, rng, n)
            except OSError:
                time.sleep(0.01)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"ABANDONED n={count[0]}")


if __name__ == "__main__":
    main()
