"""Scenes as data: frozen objects on a 3x3 grid over a background. Rendering and language live elsewhere."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

SHAPES = ("circle", "square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink")
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
BACKGROUNDS = ("white", "black", "grey", "sand", "striped")
MAX_OBJECTS = 3


@dataclass(frozen=True, order=True)
class Obj:
    shape: str
    colour: str
    size: str
    pos: str

    @property
    def combo(self) -> tuple[str, str]:
        return (self.shape, self.colour)

    def replace(self, **kw: str) -> Obj:
        d = {"shape": self.shape, "colour": self.colour, "size": self.size, "pos": self.pos}
        d.update(kw)
        return Obj(**d)

    def to_dict(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "pos": self.pos}


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str

    def __post_init__(self) -> None:
        # Canonical order, so equal scenes compare (and hash) equal however they were built.
        object.__setattr__(self, "objects", tuple(sorted(self.objects)))

    def key(self) -> tuple:
        return (self.background, self.objects)

    def is_valid(self) -> bool:
        n = len(self.objects)
        return (1 <= n <= MAX_OBJECTS and len({o.combo for o in self.objects}) == n
                and len({o.pos for o in self.objects}) == n and self.background in BACKGROUNDS
                and all(o.shape in SHAPES and o.colour in COLOURS and o.size in SIZES and o.pos in POSITIONS
                        for o in self.objects))

    def combos(self) -> set[tuple[str, str]]:
        return {o.combo for o in self.objects}

    def free_cells(self) -> list[str]:
        used = {o.pos for o in self.objects}
        return [p for p in POSITIONS if p not in used]

    def with_objects(self, objects: Iterable[Obj]) -> Scene:
        return Scene(tuple(objects), self.background)

    def replace_obj(self, old: Obj, new: Obj | None) -> Scene:
        objs = [o for o in self.objects if o != old]
        if new is not None:
            objs.append(new)
        return Scene(tuple(objs), self.background)

    def to_dict(self) -> dict:
        return {"objects": [o.to_dict() for o in self.objects], "background": self.background}

    @staticmethod
    def from_dict(d: dict) -> Scene:
        return Scene(tuple(Obj(**o) for o in d["objects"]), d["background"])


def all_combos() -> list[tuple[str, str]]:
    return [(s, c) for s in SHAPES for c in COLOURS]


def random_obj(rng: random.Random, combos: list[tuple[str, str]], taken: set, cells: list[str]) -> Obj | None:
    free = [c for c in combos if c not in taken]
    if not free or not cells:
        return None
    shape, colour = rng.choice(free)
    return Obj(shape, colour, rng.choice(SIZES), rng.choice(cells))


def random_scene(rng: random.Random, combos: list[tuple[str, str]], n: int | None = None) -> Scene:
    n = n or rng.choices((1, 2, 3), weights=(0.35, 0.35, 0.3))[0]
    objs: list[Obj] = []
    for _ in range(n):
        o = random_obj(rng, combos, {x.combo for x in objs}, [p for p in POSITIONS if p not in {x.pos for x in objs}])
        assert o is not None  # at most 3 objects among 9 cells and dozens of shape/colour combos: never full
        objs.append(o)
    return Scene(tuple(objs), rng.choice(BACKGROUNDS))
