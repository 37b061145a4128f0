#!/usr/bin/env python3
"""Draw the semantic cache's trade-off plot: true hits against false hits, one point per
setting (embedder, guard on/off, threshold), on the TEST part of the quality set.

    QUALITY_CSV=target/semantic-cache-quality.csv \\
        cargo run --example semantic_cache_quality --features candle
    python3 scripts/quality-plot.py target/semantic-cache-quality.csv docs/img/semantic-cache-tradeoff.png

The CSV is the example's (embedder,part,threshold,guard,true_hits,false_hits). The PNG is
written with the standard library only (zlib + a 5x7 pixel font), so the script runs where
matplotlib is not installed. The shaded box is issue 15's goal: at most 2 % false hits
with at least 50 % true hits. Options: --part tune to draw the tuning part instead.
"""

import argparse
import csv
import struct
import zlib

W, H = 900, 640
LEFT, RIGHT, TOP, BOTTOM = 90, 270, 80, 80  # margins
X_MAX, Y_MAX = 100.0, 100.0  # per cent

FONT = {
    "0": "01110 10001 10011 10101 11001 10001 01110", "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111", "3": "11110 00001 00001 01110 00001 00001 11110",
    "4": "00010 00110 01010 10010 11111 00010 00010", "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110", "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110", "9": "01110 10001 10001 01111 00001 00010 01100",
    ".": "00000 00000 00000 00000 00000 01100 01100", "%": "11001 11010 00010 00100 01000 01011 10011",
    ",": "00000 00000 00000 00000 01100 00100 01000", "-": "00000 00000 00000 11111 00000 00000 00000",
    "(": "00010 00100 01000 01000 01000 00100 00010", ")": "01000 00100 00010 00010 00010 00100 01000",
    "=": "00000 00000 11111 00000 11111 00000 00000", ":": "00000 01100 01100 00000 01100 01100 00000",
    "/": "00001 00010 00010 00100 01000 01000 10000", "<": "00010 00100 01000 10000 01000 00100 00010",
    ">": "01000 00100 00010 00001 00010 00100 01000", "+": "00000 00100 00100 11111 00100 00100 00000",
    " ": "00000 00000 00000 00000 00000 00000 00000",
    "A": "01110 10001 10001 11111 10001 10001 10001", "B": "11110 10001 10001 11110 10001 10001 11110",
    "C": "01110 10001 10000 10000 10000 10001 01110", "D": "11100 10010 10001 10001 10001 10010 11100",
    "E": "11111 10000 10000 11110 10000 10000 11111", "F": "11111 10000 10000 11110 10000 10000 10000",
    "G": "01110 10001 10000 10111 10001 10001 01111", "H": "10001 10001 10001 11111 10001 10001 10001",
    "I": "01110 00100 00100 00100 00100 00100 01110", "J": "00111 00010 00010 00010 00010 10010 01100",
    "K": "10001 10010 10100 11000 10100 10010 10001", "L": "10000 10000 10000 10000 10000 10000 11111",
    "M": "10001 11011 10101 10101 10001 10001 10001", "N": "10001 10001 11001 10101 10011 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110", "P": "11110 10001 10001 11110 10000 10000 10000",
    "Q": "01110 10001 10001 10001 10101 10010 01101", "R": "11110 10001 10001 11110 10100 10010 10001",
    "S": "01111 10000 10000 01110 00001 00001 11110", "T": "11111 00100 00100 00100 00100 00100 00100",
    "U": "10001 10001 10001 10001 10001 10001 01110", "V": "10001 10001 10001 10001 10001 01010 00100",
    "W": "10001 10001 10001 10101 10101 10101 01010", "X": "10001 10001 01010 00100 01010 10001 10001",
    "Y": "10001 10001 01010 00100 00100 00100 00100", "Z": "11111 00001 00010 00100 01000 10000 11111",
}

SERIES = [  # (embedder, guard, colour, label)
    ("minilm", True, (200, 40, 40), "MINILM+GUARD"),
    ("minilm-nofloor", True, (230, 140, 30), "MINILM+GRD NO FLR"),
    ("minilm", False, (240, 150, 150), "MINILM NO GUARD"),
    ("hashing", True, (30, 80, 200), "HASHING+GUARD"),
    ("hashing", False, (140, 175, 240), "HASHING NO GRD"),
]


class Canvas:
    def __init__(self, w, h):
        self.w, self.h = w, h
        self.px = bytearray(b"\xff" * (w * h * 3))

    def set(self, x, y, c):
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.px[i:i + 3] = bytes(c)

    def rect(self, x0, y0, x1, y1, c):
        for y in range(min(y0, y1), max(y0, y1) + 1):
            for x in range(min(x0, x1), max(x0, x1) + 1):
                self.set(x, y, c)

    def line(self, x0, y0, x1, y1, c, width=1):
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for s in range(steps + 1):
            x = round(x0 + (x1 - x0) * s / steps)
            y = round(y0 + (y1 - y0) * s / steps)
            self.rect(x - width // 2, y - width // 2, x + (width - 1) // 2, y + (width - 1) // 2, c)

    def text(self, x, y, s, c=(0, 0, 0), scale=2):
        for ch in s.upper():
            rows = FONT.get(ch, FONT[" "]).split()
            for r, row in enumerate(rows):
                for col, bit in enumerate(row):
                    if bit == "1":
                        self.rect(x + col * scale, y + r * scale,
                                  x + col * scale + scale - 1, y + r * scale + scale - 1, c)
            x += 6 * scale
        return x

    def text_width(self, s, scale=2):
        return len(s) * 6 * scale

    def png(self, path):
        raw = b"".join(b"\x00" + bytes(self.px[y * self.w * 3:(y + 1) * self.w * 3])
                       for y in range(self.h))

        def chunk(kind, data):
            out = struct.pack(">I", len(data)) + kind + data
            return out + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        with open(path, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n")
            f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)))
            f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
            f.write(chunk(b"IEND", b""))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("png")
    ap.add_argument("--part", default="test")
    args = ap.parse_args()
    rows = [r for r in csv.DictReader(open(args.csv)) if r["part"] == args.part]

    c = Canvas(W, H)
    x0, x1, y0, y1 = LEFT, W - RIGHT, H - BOTTOM, TOP
    # A square-root scale on false hits: the settings worth having sit between 0 and 5 %.
    px = lambda v: round(x0 + (x1 - x0) * (max(v, 0.0) / X_MAX) ** 0.5)
    py = lambda v: round(y0 - (y0 - y1) * v / Y_MAX)
    # The goal: <= 2 % false hits with >= 50 % true hits.
    c.rect(px(0), py(Y_MAX), px(2), py(50), (210, 240, 210))
    for v in (0, 1, 2, 5, 10, 20, 40, 70, 100):
        c.line(px(v), y0, px(v), y1, (230, 230, 230))
        label = f"{v}"
        c.text(px(v) - c.text_width(label) // 2, y0 + 10, label)
    for v in range(0, int(Y_MAX) + 1, 10):
        c.line(x0, py(v), x1, py(v), (230, 230, 230))
        label = f"{v}"
        c.text(x0 - 10 - c.text_width(label), py(v) - 7, label)
    c.line(x0, y0, x1, y0, (0, 0, 0), 2)
    c.line(x0, y0, x0, y1, (0, 0, 0), 2)
    c.text(x0 + 60, y0 + 40, "FALSE HITS: TRAPS SERVED (%, SQUARE-ROOT SCALE)")
    title = f"SEMANTIC CACHE, {args.part.upper()} PART: TRUE VS FALSE HITS"
    c.text(x0, 15, title)
    c.text(10, y1 - 30, "TRUE HITS: SHOULD-HIT PAIRS SERVED (%)")
    c.text(px(2) + 6, py(Y_MAX) + 6, "GOAL", (40, 120, 40))

    legend_y = TOP + 10
    for embedder, guard, colour, label in SERIES:
        pts = sorted(
            (float(r["false_hits"]) * 100, float(r["true_hits"]) * 100, float(r["threshold"]))
            for r in rows
            if r["embedder"] == embedder and (r["guard"] == "true") == guard
        )
        if not pts:
            continue
        for (a, b, _), (d, e, _) in zip(pts, pts[1:]):
            c.line(px(min(a, X_MAX)), py(b), px(min(d, X_MAX)), py(e), colour, 2)
        for a, b, t in pts:
            x, y = px(min(a, X_MAX)), py(b)
            c.rect(x - 4, y - 4, x + 4, y + 4, colour)
            if guard:
                c.text(x + 7, y - 16, f"{t:.2f}", colour, 1)
        c.rect(W - RIGHT + 20, legend_y, W - RIGHT + 34, legend_y + 14, colour)
        c.text(W - RIGHT + 42, legend_y, label)
        legend_y += 30
    c.text(W - RIGHT + 20, legend_y + 10, "NUMBERS: THRESHOLD", (80, 80, 80), 1)
    c.png(args.png)
    print(f"wrote {args.png} ({len(rows)} settings)")


if __name__ == "__main__":
    main()
