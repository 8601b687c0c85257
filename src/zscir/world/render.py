"""Draw a scene: 128x128 RGB, one object per 3x3 cell, with small seeded jitter (offset, rotation, shade)."""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw

from zscir.world.scene import POSITIONS, Scene

RGB = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (35, 70, 225), "yellow": (240, 215, 20),
       "purple": (130, 40, 170), "orange": (245, 135, 15), "cyan": (30, 210, 220), "pink": (250, 120, 190)}
BG = {"white": (250, 250, 250), "black": (15, 15, 15), "grey": (128, 128, 128), "sand": (222, 196, 140)}
STRIPES = ((205, 225, 245), (120, 150, 190))


def _poly(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    def ring(n: int, start: float, radii: tuple[float, ...] = (1.0,)) -> list[tuple[float, float]]:
        pts = []
        for i in range(n):
            a = start + rot + 2 * math.pi * i / n
            rr = r * radii[i % len(radii)]
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts

    up = -math.pi / 2
    if shape == "square":
        return ring(4, math.pi / 4, (0.95,))
    if shape == "diamond":
        pts = ring(4, up)
        return [(cx + (x - cx) * 0.65, y) for x, y in pts]
    if shape == "triangle":
        return [(x, y + r * 0.15) for x, y in ring(3, up, (1.1,))]
    if shape == "pentagon":
        return ring(5, up)
    if shape == "hexagon":
        return ring(6, 0)
    if shape == "star":
        return ring(10, up, (1.1, 0.45))
    if shape == "cross":
        w = r * 0.36
        base = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
        c, s = math.cos(rot), math.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, size: int = 128, rng_seed: int = 0) -> Image.Image:
    rng = random.Random(rng_seed)
    bg = scene.background
    im = Image.new("RGB", (size, size), BG.get(bg, STRIPES[0]))
    d = ImageDraw.Draw(im)
    if bg == "striped":
        step = max(4, size // 16)
        for x in range(-size, size, step * 2):
            d.polygon([(x, 0), (x + step, 0), (x + step + size, size), (x + size, size)], fill=STRIPES[1])
    cell = size / 3
    for o in scene.objects:
        i = POSITIONS.index(o.pos)
        row, col = divmod(i, 3)
        r = cell * (0.40 if o.size == "large" else 0.22)
        slack = cell / 2 - r * 1.05
        cx = (col + 0.5) * cell + rng.uniform(-slack, slack) * 0.6
        cy = (row + 0.5) * cell + rng.uniform(-slack, slack) * 0.6
        rot = math.radians(rng.uniform(-8, 8))
        shade = rng.uniform(0.9, 1.1)
        fill = tuple(max(0, min(255, int(v * shade))) for v in RGB[o.colour])
        if o.shape == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            d.polygon(_poly(o.shape, cx, cy, r, rot), fill=fill)
    return im
