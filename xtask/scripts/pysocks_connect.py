#!/usr/bin/env python3
"""Opens a TCP connection through a SOCKS5 proxy's CONNECT (PySocks), sends
a message to an echo server and prints what comes back. Used by
`cargo xtask e2e` (scenario pysocks-connect).

The target host is handed to the proxy as given (rdns=True): a name is
resolved by the proxy, not here. Exit status 0 when the whole message came
back; 1 otherwise, with the reason on stderr.
"""

import argparse
import socket
import sys

import socks  # PySocks: pip install PySocks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--proxy-host", default="127.0.0.1")
    parser.add_argument("--proxy-port", type=int, required=True)
    parser.add_argument("--target-host", required=True)
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--message", required=True)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()

    message = args.message.encode()
    sock = socks.socksocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.set_proxy(socks.SOCKS5, args.proxy_host, args.proxy_port, rdns=True,
                   username=args.user, password=args.password)
    sock.settimeout(args.timeout)
    got = b""
    try:
        sock.connect((args.target_host, args.target_port))
        sock.sendall(message)
        while len(got) < len(message):
            chunk = sock.recv(len(message) - len(got))
            if not chunk:
                break
            got += chunk
    except (OSError, socks.ProxyError) as error:
        print(f"proxy error: {error!r}", file=sys.stderr)
        return 1
    finally:
        sock.close()
    if got != message:
        print(f"echo differs: got {got!r}, sent {message!r}", file=sys.stderr)
        return 1
    sys.stdout.write(got.decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
