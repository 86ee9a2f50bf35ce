#!/usr/bin/env python3
"""A Python 3 port of the reference client of the seed notes (protocol version 1).

It builds frames exactly as the original does: the CRC (crcmod) is computed over
the lowercase hex text of the payload, and the body carries the raw payload
followed by the CRC. The original sends one CRC-8 frame of b'a' to
127.0.0.1:51314 and never reads an answer; this port adds a choice of CRC size,
several payloads, and --wait-ack to read and check the server's acks.
"""

import argparse
import binascii
import socket
import struct
import sys

import crcmod.predefined

# crcmod's names for the catalogue algorithms of docs/PROTOCOL.md.
CRC_NAMES = {1: "crc-8", 2: "crc-16", 4: "crc-32"}
ACK_LEN = 25
STATUS = {0: "ok", 1: "crc mismatch", 2: "unsupported version", 3: "unsupported crc size",
          4: "frame too large", 5: "handler failed", 6: "malformed header"}


def build_frame(real_data: bytes, crc_size: int) -> bytes:
    """The reference client's steps, in Python 3."""
    crc = crcmod.predefined.Crc(CRC_NAMES[crc_size])
    hex_real_data = binascii.hexlify(real_data)
    crc.update(hex_real_data)
    real_data_crc_bytes = bytes.fromhex(crc.hexdigest())
    body_with_crc_bytes = real_data + real_data_crc_bytes
    version, bodysize, crcsize = 1, len(body_with_crc_bytes), len(real_data_crc_bytes)
    return struct.pack("!3I", version, bodysize, crcsize) + body_with_crc_bytes


def read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"server closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def check_ack(ack: bytes, expected_seq: int) -> int:
    version, bodysize, crcsize = struct.unpack("!3I", ack[:12])
    if (version, bodysize, crcsize) != (2, 13, 4):
        raise ValueError(f"not an ack header: {ack[:12].hex()}")
    payload, trailer = ack[12:21], ack[21:25]
    crc = crcmod.predefined.Crc("crc-32c")
    crc.update(payload)
    if crc.digest() != trailer:
        raise ValueError(f"ack crc mismatch: {trailer.hex()} != {crc.hexdigest()}")
    status, seq = struct.unpack("!BQ", payload)
    if seq != expected_seq:
        raise ValueError(f"ack for seq {seq}, expected {expected_seq}")
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=51314)
    parser.add_argument("--crc-size", type=int, choices=sorted(CRC_NAMES), default=1)
    parser.add_argument("--wait-ack", action="store_true")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("payloads", nargs="*", default=["a"])
    args = parser.parse_args()

    sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
    frames = [build_frame(p.encode("utf-8"), args.crc_size) for p in args.payloads]
    sock.sendall(b"".join(frames))
    failed = 0
    if args.wait_ack:
        for seq, payload in enumerate(args.payloads):
            status = check_ack(read_exact(sock, ACK_LEN), seq)
            print(f"ack seq={seq} status={status} ({STATUS.get(status, '?')}) payload={payload!r}")
            failed += status != 0
    sock.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
