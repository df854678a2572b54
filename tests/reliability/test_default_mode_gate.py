"""The gate reads what it needs of a Produce request (acks, topic names) in every encoding clients use."""

from __future__ import annotations

import struct

import pytest

from spendstream.gate import produce_request, request_header


def uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def produce_frame(version: int, topics: dict[str, list[bytes]], acks: int = -1, client_id: str = "app") -> bytes:
    """A Produce request frame (without its size) as clients encode it: classic up to v8, flexible from v9."""
    flexible = version >= 9
    frame = struct.pack(">hhih", 0, version, 42, len(client_id)) + client_id.encode()
    if flexible:
        frame += uvarint(0)  # header tagged fields
    if version >= 3:
        frame += uvarint(0) if flexible else struct.pack(">h", -1)  # no transactional id
    frame += struct.pack(">hi", acks, 30_000)
    frame += uvarint(len(topics) + 1) if flexible else struct.pack(">i", len(topics))
    for name, batches in topics.items():
        frame += (uvarint(len(name) + 1) if flexible else struct.pack(">h", len(name))) + name.encode()
        frame += uvarint(len(batches) + 1) if flexible else struct.pack(">i", len(batches))
        for index, records in enumerate(batches):
            frame += struct.pack(">i", index)
            frame += (uvarint(len(records) + 1) if flexible else struct.pack(">i", len(records))) + records
            if flexible:
                frame += uvarint(0)
        if flexible:
            frame += uvarint(0)
    if flexible:
        frame += uvarint(0)
    return frame


@pytest.mark.parametrize("version", [3, 7, 8, 9, 10, 11])
def test_the_topics_and_acks_of_a_produce_request_are_read(version: int) -> None:
    frame = produce_frame(version, {"llm.calls": [b"\x00" * 300, b"\x01" * 5], "other": [b"x" * 130]}, acks=1)
    header = request_header(frame)
    assert (header.api_key, header.api_version, header.correlation_id, header.client_id) == (0, version, 42, "app")
    request = produce_request(frame, header)
    assert request.acks == 1
    assert request.topics == ("llm.calls", "other")


def test_a_request_naming_topics_by_id_is_not_known() -> None:
    frame = struct.pack(">hhih", 0, 13, 7, 3) + b"app" + uvarint(0) + uvarint(0) + struct.pack(">hi", -1, 1000)
    frame += uvarint(2) + b"\x00" * 16
    assert produce_request(frame, request_header(frame)).topics is None
