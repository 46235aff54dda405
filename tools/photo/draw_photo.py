#!/usr/bin/env python3
"""Draws examples/shapes_photo.png: a 64x64 "photo" for the inversion example, made outside the model.

A large purple square and a small white circle on a blue background, with uneven lighting, soft edges and sensor
noise, so it is not one of the flat scenes the shipped model was trained on. Python standard library only.
Run from the repository root: python3 tools/photo/draw_photo.py
"""
import math, random, struct, zlib

SIZE = 64
random.seed(7)

def coverage(x, y, inside, samples=4):
    """Fraction of the pixel (x, y) inside a shape: supersampled, so edges are soft as in a photo."""
    hits = 0
    for i in range(samples):
        for j in range(samples):
            if inside(x + (i + 0.5) / samples, y + (j + 0.5) / samples):
                hits += 1
    return hits / (samples * samples)

square = lambda px, py: 10 <= px <= 36 and 14 <= py <= 40
circle = lambda px, py: (px - 47) ** 2 + (py - 42) ** 2 <= 7.5 ** 2

rows = []
for y in range(SIZE):
    row = bytearray([0])  # PNG filter type 0
    for x in range(SIZE):
        light = 0.88 + 0.2 * (1 - (x + y) / (2 * SIZE))  # brighter towards the top left
        colour = (40, 70, 220)
        for inside, c in ((square, (150, 60, 190)), (circle, (245, 245, 245))):
            a = coverage(x, y, inside)
            colour = tuple(a * ci + (1 - a) * bi for ci, bi in zip(c, colour))
        row += bytes(max(0, min(255, round(v * light + random.gauss(0, 4)))) for v in colour)
    rows.append(bytes(row))

def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", SIZE, SIZE, 8, 2, 0, 0, 0)) \
    + chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + chunk(b"IEND", b"")
with open("examples/shapes_photo.png", "wb") as f:
    f.write(png)
print("examples/shapes_photo.png")
