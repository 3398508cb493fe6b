#!/usr/bin/env python3
"""Writes the hostile inputs of Kiln's fuzz corpus (fuzz/corpus/<target>/), one file per case.

Run once when a case is added; the files are committed, and fuzz/tests/corpus.rs replays them
(and mutates them) in `cargo test`. Each file's name says what it is.
"""
import os
import struct
import zlib

ROOT = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    os.makedirs(os.path.join(ROOT, target), exist_ok=True)
    with open(os.path.join(ROOT, target, name), "wb") as f:
        f.write(data)


def crc8(data):
    crc = 0
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def flac_constant_frames(frames):
    """Stereo 16-bit 44.1 kHz, no length in STREAMINFO, frames of 65,535 samples whose subframes
    are CONSTANT: ~15 bytes per 512 KB of decoded PCM."""
    out = bytearray(b"fLaC" + bytes([0x80, 0, 0, 34]) + b"\xff\xff\xff\xff" + bytes(6))
    out += struct.pack(">Q", (44100 << 44) | (1 << 41) | (15 << 36)) + bytes(16)
    for n in range(min(frames, 127)):
        frame = bytearray([0xFF, 0xF8, 0x70, 0x18, n, 0xFF, 0xFE])
        frame.append(crc8(frame))
        for value in (0x1000, 0xF000):
            frame += b"\x00" + struct.pack(">H", value)
        frame += struct.pack(">H", crc16(frame))
        out += frame
    return bytes(out)


def riff(channels, rate, bits, data_len, data=b"\x00" * 16, fmt_len=16):
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * max(channels, 1) * bits // 8 & 0xFFFFFFFF, max(channels, 1) * bits // 8 & 0xFFFF, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", fmt_len) + fmt + b"data" + struct.pack("<I", data_len) + data
    return b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + body


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


bomb = flac_constant_frames(127)
write("audio", "flac-constant-subframes-bomb.flac", bomb)
write("audio", "flac-truncated.flac", bomb[:61])
write("audio", "flac-streaminfo-only.flac", bomb[:42])
write("audio", "mp3-truncated-frame.mp3", bytes([0xFF, 0xFB, 0x90, 0x64]) + bytes(40))
write("audio", "mp3-id3-claims-256mb.mp3", b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f" + bytes([0xFF, 0xFB, 0x90, 0x64]) + bytes(20))
write("audio", "wav-65535-channels-4ghz.wav", riff(65535, 4_000_000_000, 32, 0xFFFFFFFF))
write("audio", "wav-zero-channels.wav", riff(0, 44100, 16, 16))
write("audio", "wav-fmt-chunk-4gb.wav", riff(2, 44100, 16, 16, fmt_len=0xFFFFFFF0))
write("audio", "wav-data-4gb-claimed.wav", riff(2, 44100, 16, 0xFFFFFFFF))

ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 6, 0, 0, 0)
png = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b"")
write("artwork", "png-claims-60000x60000.png", png)
write("artwork", "png-truncated.png", png[:40])
sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, 65500, 65500, 3) + bytes([1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0])
write("artwork", "jpeg-claims-65500x65500.jpg", b"\xff\xd8" + sof + b"\xff\xd9")

good = b'{"request_id":"r1","release_id":1,"asset_id":1,"asset_guid":"a.wav","derivative_assets":["loudness"]}'
write("manifest_line", "valid.jsonl", good)
write("manifest_line", "bad-utf8.jsonl", good.replace(b"a.wav", b"\xff\xfe\xc3(.wav"))
write("manifest_line", "nested-arrays-20000.jsonl", b"[" * 20000 + b"]" * 20000)
write("manifest_line", "huge-number.jsonl", good.replace(b'"release_id":1', b'"release_id":1' + b"0" * 400))
write("manifest_line", "path-escape.jsonl", good.replace(b"a.wav", b"../../etc/passwd"))
write("manifest_line", "nul-and-controls.jsonl", good.replace(b"a.wav", b"a\\u0000\\u001b.wav"))
write("manifest_line", "catalog.csv", b"request_id,release_id,asset_id,asset_guid,derivative_assets,queue,priority\n"
      b"r1,1,1,m/1.wav,loudness;bpm,backfill,-10\n\"r,2\",1,2,\"m/2.wav\",loudness|aac,,\n"
      b"r3,x,3,../etc/passwd,loudness\n\"unterminated,1,1,a,b\n")

write("config", "valid.toml", b'[scheduler]\nlisten = "127.0.0.1:7450"\n[worker]\nslots = 4\n')
write("config", "nested-arrays-5000.toml", b"[scheduler]\npeers = " + b"[" * 5000 + b"]" * 5000 + b"\n")
write("config", "nested-inline-tables-3000.toml", b"a = " + b"{b = " * 3000 + b"1" + b"}" * 3000 + b"\n")
write("config", "bad-utf8.toml", b'[worker]\nmasters = "\xff\xfe"\n')
write("config", "duration-overflow.toml", b'[scheduler]\nlease_ttl = "99999999999999999999h"\n')
write("config", "tls-without-files.toml", b"[scheduler]\ntls = {}\n")

write("ledger", "entry-header-only", b"KLNE\x01\x00")
write("ledger", "entry-claims-2-64-commands", b"KLNE\x01\x00" + b"\xff" * 9 + b"\x01")
write("ledger", "snapshot-claims-huge-maps", b"KLNS\x01\x00" + b"\xff\xff\xff\xff\x0f" * 8)
write("ledger", "unknown-version", b"KLNE\xff\xff" + bytes(32))


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(num, wire, payload):
    return varint(num << 3 | wire) + payload


# RUSTSEC-2024-0437: nested start-group tags of an unknown field (100), the advisory's input.
write("raft_message", "nested-groups-64k.bin", bytes([0xA3, 0x06]) * 32768)
write("raft_message", "nested-groups-in-an-entry.bin", field(7, 2, varint(4096) + bytes([0xA3, 0x06]) * 2048))
write("raft_message", "group-as-a-known-field.bin", bytes([0x5B]) * 1024)
heartbeat = lambda frm, commit: field(1, 0, varint(8)) + field(2, 0, varint(1)) + field(3, 0, varint(frm)) + field(4, 0, varint(99)) + field(8, 0, varint(commit))
write("raft_message", "heartbeat-from-a-stranger.bin", heartbeat(9, 10**9))
write("raft_message", "heartbeat-commit-past-the-log.bin", heartbeat(2, 10**12))
write("raft_message", "length-past-the-end.bin", field(7, 2, varint(1 << 40)))
