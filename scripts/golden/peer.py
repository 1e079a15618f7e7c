#!/usr/bin/env python3
"""Small UDP/TCP peers for the golden comparison with the Linux kernel.

Run inside a network namespace (``ip netns exec NS python3 peer.py ...``):

    peer.py serve NAME PORT               UDP+TCP server; answers "NAME ip:port" (the peer it saw)
    peer.py udp DST PORT SPORT [TIMEOUT]  one datagram from SPORT; prints one JSON line
    peer.py tcp DST PORT SPORT [TIMEOUT]  one connection from SPORT; prints one JSON line

A client line is ``{"reply": ..., "from": "ip:port"}``, ``{"timeout": true}`` or
``{"error": errno-name, "icmp": [type, code], "offender": ip}`` (the offender and
ICMP type/code from IP_RECVERR, as emunet's SocketErrorEvent reports them).
"""

from __future__ import annotations

import errno
import json
import select
import socket
import struct
import sys
import threading

IP_RECVERR = 11
_EXT_ERR = struct.Struct("=IBBBBII")


def serve(name: str, port: int) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", port))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", port))
    tcp.listen(64)

    def udp_loop() -> None:
        while True:
            _, peer = udp.recvfrom(2048)
            udp.sendto(f"{name} {peer[0]}:{peer[1]}".encode(), peer)

    threading.Thread(target=udp_loop, daemon=True).start()
    print("ready", flush=True)
    while True:
        conn, peer = tcp.accept()
        with conn:
            conn.sendall(f"{name} {peer[0]}:{peer[1]}".encode())


def _icmp_error(sock: socket.socket, err: int) -> dict[str, object]:
    out: dict[str, object] = {"error": errno.errorcode.get(err, str(err))}
    try:
        _, anc, _, _ = sock.recvmsg(512, 512, socket.MSG_ERRQUEUE)
    except OSError:
        return out
    for level, typ, data in anc:
        if level == socket.IPPROTO_IP and typ == IP_RECVERR and len(data) >= 24:
            _errno, _origin, itype, icode, _pad, _info, _data = _EXT_ERR.unpack_from(data)
            out["icmp"] = [itype, icode]
            out["offender"] = socket.inet_ntoa(data[20:24])
    return out


def udp_client(dst: str, port: int, sport: int, timeout: float) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    sock.bind(("0.0.0.0", sport))
    sock.connect((dst, port))
    sock.send(b"?")
    ready, _, _ = select.select([sock], [], [], timeout)
    if not ready:
        return {"timeout": True}
    try:
        data, peer = sock.recvfrom(2048)
    except OSError as exc:
        return _icmp_error(sock, exc.errno or 0)
    return {"reply": data.decode(), "from": f"{peer[0]}:{peer[1]}"}


def tcp_client(dst: str, port: int, sport: int, timeout: float) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", sport))
    sock.settimeout(timeout)
    try:
        sock.connect((dst, port))
        peer = sock.getpeername()
        data = b""
        while chunk := sock.recv(2048):
            data += chunk
    except TimeoutError:
        return {"timeout": True}
    except OSError as exc:
        return {"error": errno.errorcode.get(exc.errno or 0, str(exc.errno))}
    finally:
        sock.close()
    return {"reply": data.decode(), "from": f"{peer[0]}:{peer[1]}"}


def main(argv: list[str]) -> None:
    cmd = argv[0]
    if cmd == "serve":
        serve(argv[1], int(argv[2]))
        return
    timeout = float(argv[4]) if len(argv) > 4 else 1.0
    client = udp_client if cmd == "udp" else tcp_client
    print(json.dumps(client(argv[1], int(argv[2]), int(argv[3]), timeout)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
