"""pod-shell's clients and servers over TCP and UDP: ``curl``, ``nc`` and ``iperf``
(see :mod:`emunet.nodes.shell`)."""

from __future__ import annotations

import asyncio
import time
from ipaddress import IPv4Address
from urllib.parse import urlsplit

from emunet.nodes.iperf_udp import (
    DEFAULT_LEN,
    MAX_LEN,
    MIN_LEN,
    iperf_udp_client,
    iperf_udp_server,
)
from emunet.nodes.shell_env import (
    Shell,
    UsageError,
    clip,
    human,
    int_opt,
    num_opt,
    os_reason,
    parse_opts,
    rate,
)
from emunet.nodes.sockets import Stream

__all__ = ["cmd_curl", "cmd_iperf", "cmd_nc"]


# -------------------------------------------------------------------- curl


class CurlError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


async def cmd_curl(sh: Shell, argv: list[str]) -> int:
    try:
        opts, rest = parse_opts(
            argv[1:], "svim:IXH:A:o:", ["max-time=", "connect-timeout=", "silent", "verbose"]
        )
        max_time = num_opt(opts, "-m", 0, "max time", 86400) or num_opt(
            opts, "--max-time", 0, "max time", 86400
        )
        connect_timeout = num_opt(opts, "--connect-timeout", 10.0, "connect timeout", 86400)
    except UsageError as exc:
        sh.eprint(f"curl: option: {exc}")
        sh.eprint("curl: try 'curl --help' for more information")
        return 2
    silent = "-s" in opts or "--silent" in opts
    verbose = "-v" in opts or "--verbose" in opts
    if not rest:
        sh.eprint("curl: no URL specified!")
        return 2
    url = rest[0]
    started = time.monotonic()
    try:
        coro = _curl(sh, url, opts, verbose, connect_timeout)
        if max_time:
            try:
                return await asyncio.wait_for(coro, max_time)
            except TimeoutError:
                ms = int((time.monotonic() - started) * 1000)
                raise CurlError(28, f"Operation timed out after {ms} milliseconds") from None
        return await coro
    except CurlError as exc:
        if not silent or "-S" in opts:
            sh.eprint(f"curl: ({exc.code}) {exc}")
        return exc.code


async def _curl(
    sh: Shell, url: str, opts: dict[str, str], verbose: bool, connect_timeout: float
) -> int:
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urlsplit(url)
        port = parts.port if parts.port is not None else 80  # :0 is port 0, as curl has it
    except ValueError:  # an unclosed [, a port that is no number or past 65535
        raise CurlError(3, "URL using bad/illegal format or missing URL") from None
    if parts.scheme != "http":
        raise CurlError(1, f'Protocol "{clip(parts.scheme)}" not supported or disabled in libcurl')
    host = parts.hostname or ""
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    ip = await sh.resolve(host)
    if ip is None:
        raise CurlError(6, f"Could not resolve host: {host}")
    if verbose:
        sh.eprint(f"*   Trying {ip}:{port}...")
    t0 = time.monotonic()
    if port == 0:  # connect(2) to port 0 is refused
        raise CurlError(7, f"Failed to connect to {host} port 0 after 0 ms: Couldn't connect "
                        "to server")  # fmt: skip
    try:
        reader, writer = await sh.runtime.open_connection(sh.pod, ip, port, timeout=connect_timeout)
    except TimeoutError:
        ms = int((time.monotonic() - t0) * 1000)
        raise CurlError(28, f"Failed to connect to {host} port {port} after {ms} ms: "
                        "Timeout was reached") from None  # fmt: skip
    except OSError as exc:
        ms = int((time.monotonic() - t0) * 1000)
        why = "Couldn't connect to server"
        if isinstance(exc, ConnectionRefusedError):
            why = "Couldn't connect to server (Connection refused)"
        elif "UNREACH" in str(exc):
            why = "Couldn't connect to server (No route to host)"
        raise CurlError(
            7, f"Failed to connect to {host} port {port} after {ms} ms: {why}"
        ) from None
    if verbose:
        sh.eprint(f"* Connected to {host} ({ip}) port {port}")
    method = "HEAD" if "-I" in opts else opts.get("-X", "GET")
    headers = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}" + (f":{port}" if port != 80 else ""),
        f"User-Agent: {opts.get('-A', 'curl/8.5.0')}",
        "Accept: */*",
    ]
    if "-H" in opts:
        headers.append(opts["-H"])
    request = "\r\n".join(headers) + "\r\n\r\n"
    if verbose:
        for line in headers:
            sh.eprint(f"> {line}")
        sh.eprint(">")
    try:
        writer.write(request.encode())
        await writer.drain()
        status = await reader.readline()
        if not status:
            raise CurlError(52, "Empty reply from server")
        head = [status.decode("latin-1").rstrip("\r\n")]
        length: int | None = None
        chunked = False
        while True:
            raw = await reader.readline()
            text = raw.decode("latin-1").rstrip("\r\n")
            if not text:
                break
            head.append(text)
            name, _, value = text.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            elif name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if verbose:
            for line_s in head:
                sh.eprint(f"< {line_s}")
            sh.eprint("<")
        if "-i" in opts or "-I" in opts:
            sh.out("\r\n".join(head) + "\r\n\r\n")
        if method == "HEAD":
            body = b""
        elif chunked:
            body = await _read_chunked(reader)
        elif length is not None:
            body = await reader.readexactly(length)
        else:
            body = await reader.read()
    except asyncio.IncompleteReadError:
        raise CurlError(18, "transfer closed with outstanding read data remaining") from None
    except ConnectionResetError:
        raise CurlError(56, "Recv failure: Connection reset by peer") from None
    except OSError as exc:
        raise CurlError(56, f"Recv failure: {exc.strerror or exc}") from None
    except ValueError:
        raise CurlError(8, "Weird server reply") from None
    finally:
        writer.abort() if writer.conn.error else writer.close()
    sh.out(body.decode("utf-8", "replace"))
    if verbose:
        sh.eprint(f"* Connection #0 to host {host} left intact")
    return 0


async def _read_chunked(reader: Stream) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readline()).strip().split(b";")[0] or b"0", 16)
        if size == 0:
            await reader.readline()
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readline()


# ---------------------------------------------------------------------- nc


async def cmd_nc(sh: Shell, argv: list[str]) -> int:
    try:
        opts, rest = parse_opts(argv[1:], "uzvw:nN")
        wait = num_opt(opts, "-w", 0, "timeout", 86400)
        if len(rest) != 2:
            raise UsageError("missing hostname and port")
        if not rest[1].isdigit() or not rest[1].isascii() or not 0 < int(rest[1]) < 65536:
            raise UsageError(f"port number invalid: {clip(rest[1])}")
        port = int(rest[1])
    except UsageError as exc:
        sh.eprint(f"nc: {exc}")
        return 1
    host = rest[0]
    ip = await sh.resolve(host)
    if ip is None:
        sh.eprint(f'nc: getaddrinfo for host "{host}" port {port}: Name or service not known')
        return 1
    if "-u" in opts:
        return await _nc_udp(sh, ip, host, port, opts, wait or 1.0)
    try:
        reader, writer = await sh.runtime.open_connection(sh.pod, ip, port, timeout=wait or 10.0)
    except OSError as exc:
        why = (
            "Connection refused"
            if isinstance(exc, ConnectionRefusedError)
            else ("Connection timed out" if isinstance(exc, TimeoutError) else os_reason(exc))
        )
        sh.eprint(f"nc: connect to {host} port {port} (tcp) failed: {why}")
        return 1
    if "-z" in opts:
        sh.eprint(f"Connection to {host} {port} port [tcp/*] succeeded!")
        writer.close()
        return 0
    try:
        if sh.stdin:
            writer.write(sh.stdin)
            await writer.drain()
        writer.close()

        async def pump() -> None:
            while data := await reader.read(65536):
                sh.out(data.decode("utf-8", "replace"))

        if wait:
            try:
                await asyncio.wait_for(pump(), wait)
            except TimeoutError:
                pass
        else:
            await pump()
    except OSError as exc:
        sh.eprint(f"nc: {os_reason(exc)}")
        return 1
    return 0


async def _nc_udp(
    sh: Shell, ip: IPv4Address, host: str, port: int, opts: dict[str, str], wait: float
) -> int:
    udp = await sh.runtime.udp_bind(sh.pod)
    try:
        udp.sendto(sh.stdin if "-z" not in opts else b"", (ip, port))
        end = sh.now + wait
        while (left := end - sh.now) > 0:
            if not await udp.wait_event(left):
                break
            if udp.errors:
                ev = udp.errors.popleft()
                if ev.errno_name == "ECONNREFUSED":
                    if "-z" in opts:
                        return 1
                    sh.eprint("nc: read: Connection refused")
                    return 1
                continue
            got = udp.sock.recvfrom()
            if got is not None:
                sh.out(got[0].decode("utf-8", "replace"))
        if "-z" in opts:
            sh.eprint(f"Connection to {host} {port} port [udp/*] succeeded!")
        return 0
    except OSError as exc:
        sh.eprint(f"nc: {os_reason(exc)}")
        return 1
    finally:
        udp.close()


# -------------------------------------------------------------------- iperf


async def cmd_iperf(sh: Shell, argv: list[str]) -> int:
    try:
        opts, _rest = parse_opts(argv[1:], "c:st:p:l:ub:")
        seconds = num_opt(opts, "-t", 10.0 if "-c" in opts else 60.0, "time", 3600)
        port = int_opt(opts, "-p", 5001, 1, 65535)
        chunk = (  # a write's length, or with -u a datagram's
            int_opt(opts, "-l", 128 * 1024, 1, 1 << 20)
            if "-u" not in opts
            else int_opt(opts, "-l", DEFAULT_LEN, MIN_LEN, MAX_LEN)
        )
    except UsageError as exc:
        sh.eprint(f"iperf: {exc}")
        return 1
    bar = "-" * 60
    if "-s" in opts and "-u" in opts:
        return await iperf_udp_server(sh, port, seconds)
    if "-s" in opts:
        return await _iperf_server(sh, port, seconds, bar)
    if "-c" not in opts:
        sh.eprint("iperf: parameter error - must either be a client (-c) or server (-s)")
        return 1
    host = opts["-c"]
    ip = await sh.resolve(host)
    if ip is None:
        sh.eprint(f"iperf: failed to resolve host '{host}'")
        return 1
    if "-u" in opts:
        return await iperf_udp_client(sh, host, ip, port, seconds, opts, chunk)
    sh.print(bar)
    sh.print(f"Client connecting to {host}, TCP port {port}")
    sh.print("TCP window size:  256 KByte (default)")
    sh.print(bar)
    try:
        reader, writer = await sh.runtime.open_connection(sh.pod, ip, port, timeout=10.0)
    except OSError as exc:
        sh.eprint(f"connect failed: {os_reason(exc)}")
        return 1
    lip, lport = writer.sockname()
    sh.print(f"[  1] local {lip} port {lport} connected with {ip} port {port}")
    block = bytes(chunk)
    sent = 0
    t0 = sh.now

    async def transfer() -> bytes:
        nonlocal sent
        while sh.now - t0 < seconds:
            writer.write(block)
            sent += chunk
            await writer.drain()
        writer.close()
        line = await reader.readline()
        await writer.wait_closed()
        return line

    try:
        reply = await asyncio.wait_for(transfer(), seconds + 10.0)
    except (OSError, TimeoutError) as exc:
        writer.abort()
        sh.eprint(f"iperf: transfer failed: {exc or 'timed out (is a sink listening?)'}")
        return 1
    elapsed = sh.now - t0
    try:
        received = int(reply.strip() or b"0")
    except ValueError:
        received = sent
    sh.print("[ ID] Interval       Transfer     Bandwidth")
    sh.print(f"[  1] 0.0000-{elapsed:.4f} sec  {human(received)}  {rate(received * 8 / elapsed)}")
    return 0


async def _iperf_server(sh: Shell, port: int, seconds: float, bar: str) -> int:
    sh.print(bar)
    sh.print(f"Server listening on TCP port {port}")
    sh.print("TCP window size:  256 KByte (default)")
    sh.print(bar)
    ids = 0

    async def serve(reader: Stream, writer: Stream) -> None:
        nonlocal ids
        ids += 1
        n = ids
        rip, rport = writer.peername()
        lip, lport = writer.sockname()
        sh.print(f"[{n:3d}] local {lip} port {lport} connected with {rip} port {rport}")
        t0 = sh.now
        total = 0
        while data := await reader.read(1 << 20):
            total += len(data)
        elapsed = max(sh.now - t0, 1e-9)
        writer.write(f"{total}\n".encode())
        writer.close()
        sh.print(f"[{n:3d}] 0.0000-{elapsed:.4f} sec  {human(total)}  {rate(total * 8 / elapsed)}")

    try:
        server = await sh.runtime.start_server(sh.pod, port, serve)
    except OSError as exc:
        sh.eprint(f"bind failed: {os_reason(exc)}")
        return 1
    try:
        await asyncio.sleep(seconds)
    finally:
        server.close()
    return 0
