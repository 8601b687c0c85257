"""Modifications are functions Scene -> Scene plus a text, so every target is correct by construction.

`Mod` is one atomic change; `Compound` applies two in order; `Family` is an underspecified modification
("give it a different background") whose meaning is the exact, enumerable set of scenes it allows."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from zscir.world import language as L
from zscir.world.scene import BACKGROUNDS, COLOURS, SHAPES, SIZES, Obj, Scene

KINDS = ("colour", "shape", "size", "move", "add", "remove", "background")


@dataclass(frozen=True)
class Mod:
    kind: str
    obj: Obj | None  # the object changed (None for add/background)
    value: Any  # new colour/shape/size/pos (str), the added Obj, the new background (str), or None (remove)

    @property
    def changed(self) -> Obj:
        """The object a colour/shape/size/move/remove change acts on (those kinds always name one)."""
        assert self.obj is not None, f"a {self.kind} change names its object"
        return self.obj

    def apply(self, scene: Scene) -> Scene:
        v = self.value
        if self.kind in ("colour", "shape", "size", "move", "remove"):
            o = self.changed
        if self.kind == "colour":
            return scene.replace_obj(o, o.replace(colour=v))
        if self.kind == "shape":
            return scene.replace_obj(o, o.replace(shape=v))
        if self.kind == "size":
            return scene.replace_obj(o, o.replace(size=v))
        if self.kind == "move":
            return scene.replace_obj(o, o.replace(pos=v))
        if self.kind == "add":
            return scene.with_objects(scene.objects + (v,))
        if self.kind == "remove":
            return scene.replace_obj(o, None)
        if self.kind == "background":
            return Scene(scene.objects, v)
        raise ValueError(self.kind)

    def __call__(self, scene: Scene) -> Scene:
        return self.apply(scene)

    def text(self, rng: random.Random, scene: Scene) -> str:
        k, v = self.kind, self.value
        if k in ("colour", "shape", "size", "move", "remove"):
            o = self.changed
        if k == "colour":
            return L.change_colour(rng, scene, o, v)
        if k == "shape":
            return L.change_shape(rng, scene, o, v)
        if k == "size":
            return L.change_size(rng, scene, o, v)
        if k == "move":
            return L.move(rng, scene, o, v)
        if k == "add":
            return L.add(rng, scene, v)
        if k == "remove":
            return L.remove(rng, scene, o)
        return L.change_background(rng, scene, v)

    def result_obj(self) -> Obj | None:
        """The changed object after the change (for 'it' in a compound)."""
        if self.kind in ("colour", "shape", "size", "move"):
            return self.changed.replace(**{("pos" if self.kind == "move" else self.kind): self.value})
        return self.value if self.kind == "add" else None


@dataclass(frozen=True)
class Compound:
    mods: tuple[Mod, Mod]
    kind: str = "compound"

    def apply(self, scene: Scene) -> Scene:
        for m in self.mods:
            scene = m.apply(scene)
        return scene

    def __call__(self, scene: Scene) -> Scene:
        return self.apply(scene)

    def text(self, rng: random.Random, scene: Scene) -> str:
        m1, m2 = self.mods
        t1 = m1.text(rng, scene)
        mid = m1.apply(scene)
        t2 = m2.text(rng, mid)
        r1 = m1.result_obj()
        if m2.obj is not None and m2.obj == r1:
            t2 = t2.replace(f"the {r1.colour} {r1.shape}", "it", 1)
        return L.compound(rng, t1, t2)


def ok(scene: Scene, combos: set) -> bool:
    return scene.is_valid() and scene.combos() <= combos


def mods_of_kind(scene: Scene, kind: str, combos: set) -> list[Mod]:
    """Every valid atomic modification of one kind whose result uses only `combos`."""
    out: list[Mod] = []
    objs = scene.objects
    if kind == "colour":
        out = [Mod("colour", o, c) for o in objs for c in COLOURS if c != o.colour]
    elif kind == "shape":
        out = [Mod("shape", o, s) for o in objs for s in SHAPES if s != o.shape]
    elif kind == "size":
        out = [Mod("size", o, s) for o in objs for s in SIZES if s != o.size]
    elif kind == "move":
        out = [Mod("move", o, p) for o in objs for p in scene.free_cells()]
    elif kind == "add":
        out = [Mod("add", None, Obj(s, c, z, p)) for (s, c) in sorted(combos) for z in SIZES for p in scene.free_cells()]
    elif kind == "remove":
        out = [Mod("remove", o, None) for o in objs] if len(objs) > 1 else []
    elif kind == "background":
        out = [Mod("background", None, b) for b in BACKGROUNDS if b != scene.background]
    return [m for m in out if ok(m.apply(scene), combos)]


def random_mod(rng: random.Random, scene: Scene, combos: set, kinds: Iterable[str] = KINDS) -> Mod | None:
    kinds = list(kinds)
    rng.shuffle(kinds)
    for k in kinds:
        if k == "add":  # sample directly: enumerating every addable object is slow
            free, cells = sorted(combos - scene.combos()), scene.free_cells()
            if len(scene.objects) < 3 and free and cells:
                shape, colour = rng.choice(free)
                return Mod("add", None, Obj(shape, colour, rng.choice(SIZES), rng.choice(cells)))
            continue
        ms = mods_of_kind(scene, k, combos)
        if ms:
            return rng.choice(ms)
    return None


def random_compound(rng: random.Random, scene: Scene, combos: set) -> Compound | None:
    """Two atomic changes of different kinds; the second often acts on the same object ('... and move it')."""
    for _ in range(10):
        m1 = random_mod(rng, scene, combos, ("colour", "shape", "size", "move", "background"))
        if m1 is None:
            return None
        mid = m1.apply(scene)
        r1 = m1.result_obj()
        kinds = [k for k in ("colour", "shape", "size", "move", "background") if k != m1.kind]
        cands = [m for k in kinds for m in mods_of_kind(mid, k, combos)]
        same = [m for m in cands if r1 is not None and m.obj == r1]
        pool = same if same and rng.random() < 0.7 else cands
        if not pool:
            continue
        m2 = rng.choice(pool)
        c = Compound((m1, m2))
        end = c.apply(scene)
        if end.key() != scene.key() and end.key() not in (m1.apply(scene).key(), m2.apply(scene).key() if m2.obj is None or m2.obj in scene.objects else None):
            return c
    return None


def partials(c: Compound, scene: Scene, combos: set) -> list[Scene]:
    """Scenes that apply only part of a compound change (hard negatives)."""
    m1, m2 = c.mods
    out = [m1.apply(scene)]
    if m2.obj is None or m2.obj in scene.objects:
        only2 = m2.apply(scene)
    elif m2.obj == m1.result_obj():
        # m2 acts on the object m1 changed: apply m2's change to the original object.
        only2 = Mod(m2.kind, m1.obj, m2.value).apply(scene)
    else:
        only2 = None
    if only2 is not None and ok(only2, combos):
        out.append(only2)
    return out


# ---- underspecified modifications (CIRCO-like) ----

FAMILY_KINDS = ("background_any", "colour_any", "shape_any", "move_any", "add_colour", "add_shape", "swap_colour",
                "swap_shape")
# World v2's CIRCO-like queries: each names a concept the target must show (a colour, a shape), so a composed
# query can resolve it, while the unnamed attributes (shape, colour, size, cell) stay free: several ground truths.
NAMED_FAMILY_KINDS = ("add_colour", "add_shape", "swap_colour", "swap_shape")
# how often each is drawn (random_family shuffles this list): additions, whose text names nothing the reference
# has, twice as often as swaps
NAMED_FAMILY_DRAW = ("add_colour", "add_shape", "add_colour", "add_shape", "swap_colour", "swap_shape")


@dataclass(frozen=True)
class Family:
    """An underspecified modification of a reference; its meaning is the set `members()`."""

    kind: str
    ref: Scene
    obj: Obj | None = None
    value: str | None = None

    @property
    def subject(self) -> Obj:
        """The object a colour/shape/move family is about (those kinds always name one)."""
        assert self.obj is not None, f"a {self.kind} family names its object"
        return self.obj

    @property
    def concept(self) -> str:
        """The colour or shape an add family asks for (those kinds always name one)."""
        assert self.value is not None, f"a {self.kind} family names its concept"
        return self.value

    def members(self, combos: set) -> list[Scene]:
        s = self.ref
        if self.kind == "background_any":
            ms = mods_of_kind(s, "background", combos)
        elif self.kind == "colour_any":
            ms = [m for m in mods_of_kind(s, "colour", combos) if m.obj == self.obj]
        elif self.kind == "shape_any":
            ms = [m for m in mods_of_kind(s, "shape", combos) if m.obj == self.obj]
        elif self.kind == "move_any":
            ms = [m for m in mods_of_kind(s, "move", combos) if m.obj == self.obj]
        elif self.kind == "add_colour":
            ms = [m for m in mods_of_kind(s, "add", combos) if m.value.colour == self.value]
        elif self.kind == "add_shape":
            ms = [m for m in mods_of_kind(s, "add", combos) if m.value.shape == self.value]
        elif self.kind in ("swap_colour", "swap_shape"):
            # the object at the same cell becomes one of the named colour (any shape) / named shape (any colour),
            # of either size; the reference itself is not a member
            o = self.subject
            v = self.concept
            news = ([o.replace(shape=x, colour=v, size=z) for x in SHAPES for z in SIZES]
                    if self.kind == "swap_colour" else
                    [o.replace(colour=x, shape=v, size=z) for x in COLOURS for z in SIZES])
            out = [s.replace_obj(o, n) for n in news if n != o]
            return [x for x in out if ok(x, combos)]
        else:
            raise ValueError(self.kind)
        return [m.apply(s) for m in ms]

    def contains(self, scene: Scene, combos: set) -> bool:
        return scene.key() in {m.key() for m in self.members(combos)}

    def text(self, rng: random.Random) -> str:
        s, o = self.ref, self.obj
        if self.kind == "background_any":
            return rng.choice(["give it a different background", "change the background", "put it on another backdrop",
                               "same objects on a different background"])
        r = L.ref(rng, s, o) if o is not None else ""
        if self.kind == "colour_any":
            return rng.choice([f"make {r} another colour", f"change the colour of {r}", f"recolour {r}",
                               f"give {r} a different colour"])
        if self.kind == "shape_any":
            return rng.choice([f"make {r} a different shape", f"change the shape of {r}",
                               f"turn {r} into some other shape"])
        if self.kind == "move_any":
            return rng.choice([f"move {r} somewhere else", f"put {r} in another place", f"change where {r} is"])
        if self.kind == "add_colour":
            return rng.choice([f"add {L.a(self.concept)} object", f"add something {self.value}",
                               f"include one more {self.value} thing"])
        if self.kind in ("swap_colour", "swap_shape"):
            # named by the place it keeps, not by what it loses: the text describes what the targets show
            where = rng.choice(L.POS_WORDS[self.subject.pos])
            thing = f"something {self.concept}" if self.kind == "swap_colour" else L.a(self.concept)
            free = "any shape" if self.kind == "swap_colour" else "any colour"
            return rng.choice([f"the object {where} should be {thing}, {free}", f"show {thing} {where} instead",
                               f"{thing} {where} instead, {free}", f"make the one {where} {thing}"])
        return rng.choice([f"add {L.a(self.concept)}", f"add {L.a(self.concept)} of any colour",
                           f"also put {L.a(self.concept)} somewhere"])

    def shared_concept(self) -> str:
        s = self.ref
        objs = " and ".join(L.a(f"{x.colour} {x.shape}") for x in s.objects)
        if self.kind == "background_any":
            return objs
        if self.kind == "colour_any":
            o = self.subject
            return f"a {o.size} {o.shape} at the {o.pos}"
        if self.kind == "shape_any":
            o = self.subject
            return f"a {o.size} {o.colour} object at the {o.pos}"
        if self.kind == "move_any":
            o = self.subject
            return f"a {o.size} {o.colour} {o.shape}"
        if self.kind == "add_colour":
            return f"{objs} plus {L.a(self.concept)} object"
        if self.kind in ("swap_colour", "swap_shape"):
            o = self.subject
            rest = " and ".join(L.a(f"{x.colour} {x.shape}") for x in s.objects if x != o)
            new = f"{self.concept} object" if self.kind == "swap_colour" else self.concept
            return f"{L.a(new)} at the {o.pos}" + (f" with {rest}" if rest else "")
        return f"{objs} plus {L.a(self.concept)}"


def random_family(rng: random.Random, scene: Scene, combos: set, kinds: Iterable[str] = FAMILY_KINDS) -> Family | None:
    kinds = list(kinds)
    rng.shuffle(kinds)
    for k in kinds:
        if k in ("colour_any", "shape_any", "move_any"):
            f = Family(k, scene, rng.choice(scene.objects))
        elif k == "swap_colour":
            o = rng.choice(scene.objects)
            f = Family(k, scene, o, rng.choice([c for c in COLOURS if c != o.colour]))
        elif k == "swap_shape":
            o = rng.choice(scene.objects)
            f = Family(k, scene, o, rng.choice([x for x in SHAPES if x != o.shape]))
        elif k == "add_colour":
            f = Family(k, scene, None, rng.choice(COLOURS))
        elif k == "add_shape":
            f = Family(k, scene, None, rng.choice(SHAPES))
        else:
            f = Family(k, scene)
        if len(f.members(combos)) >= 2:
            return f
    return None
