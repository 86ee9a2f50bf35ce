#!/usr/bin/env python3
"""Sends datagrams through a SOCKS5 proxy's UDP ASSOCIATE (PySocks) to a UDP
echo server and checks every echo. Used by `cargo xtask e2e` (scenario 6).

Exit status 0 when every datagram came back unchanged from the echo server's
address; 1 otherwise, with the reason on stderr.
"""

import argparse
import socket
import struct
import sys

import socks  # PySocks: pip install PySocks

SIZES = [1, 64, 512, 1400, 8000]


def payload(index: int, size: int) -> bytes:
    body = bytes(((index * 31 + j * 7) & 0xFF) for j in range(size))
    return struct.pack("!I", index) + body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--proxy-host", default="127.0.0.1")
    parser.add_argument("--proxy-port", type=int, required=True)
    parser.add_argument("--target-host", default="127.0.0.1")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()

    # Also bounds the TCP control connection PySocks opens for the association.
    socket.setdefaulttimeout(args.timeout)
    sock = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.set_proxy(socks.SOCKS5, args.proxy_host, args.proxy_port, rdns=False,
                   username=args.user, password=args.password)
    sock.settimeout(args.timeout)
    target = (args.target_host, args.target_port)
    retries = 0
    try:
        for index in range(args.count):
            data = payload(index, SIZES[index % len(SIZES)])
            for attempt in range(2):
                sock.sendto(data, target)
                try:
                    echoed, source = sock.recvfrom(65535)
                    break
                except socket.timeout:
                    if attempt == 1:
                        print(f"datagram {index} ({len(data)} bytes): no echo within "
                              f"{args.timeout}s, twice", file=sys.stderr)
                        return 1
                    retries += 1
            if echoed != data:
                print(f"datagram {index}: echo differs ({len(echoed)} bytes back, "
                      f"{len(data)} sent)", file=sys.stderr)
                return 1
            if (source[0], source[1]) != target:
                print(f"datagram {index}: echo from {source}, expected {target}",
                      file=sys.stderr)
                return 1
    except (OSError, socks.ProxyError) as error:
        print(f"proxy error: {error!r}", file=sys.stderr)
        return 1
    finally:
        sock.close()
    print(f"{args.count} datagrams echoed ({retries} resent)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
