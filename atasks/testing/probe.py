"""Asks a port whether an AMQP 0-9-1 broker listens there, and its version, by reading the
Connection.Start it answers the protocol header with: no client library, no login."""

from __future__ import annotations

import socket

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def amqp_version(port: int) -> str | None:
    """The server's version if the port answers the AMQP 0-9-1 header with Connection.Start
    ("" if that carries no version), else None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s, s.makefile("rb") as f:
            s.sendall(AMQP_HEADER)
            header = f.read(7)  # frame type, channel, payload size
            payload = f.read(int.from_bytes(header[3:7]))
    except OSError:
        return None
    # frame type 1 (method), channel 0, class 10 (connection), method 10 (start)
    if header[:3] != b"\x01\0\0" or payload[:4] != b"\0\x0a\0\x0a":
        return None
    return server_property(payload[10 : 10 + int.from_bytes(payload[6:10])], b"version")


def server_property(table: bytes, key: bytes) -> str:
    """A string entry of an AMQP field table ("" if absent). Knows the types RabbitMQ puts in
    Connection.Start's server properties: S (long string), F (table), t (boolean)."""
    at = 0
    while at < len(table):
        name = table[at + 1 : at + 1 + table[at]]
        at += 1 + table[at]
        kind = table[at : at + 1]
        at += 1
        if kind in (b"S", b"F"):
            size = int.from_bytes(table[at : at + 4])
            if name == key and kind == b"S":
                return table[at + 4 : at + 4 + size].decode(errors="replace")
            at += 4 + size
        elif kind == b"t":
            at += 1
        else:
            break
    return ""
