"""Captions and modification texts from varied templates (synonyms, word order)."""

from __future__ import annotations

import random

from zscir.world.scene import Obj, Scene

SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
POS_WORDS = {
    "top left": ("at the top left", "in the top left corner", "in the upper left"),
    "top": ("at the top", "at the top centre", "in the upper middle"),
    "top right": ("at the top right", "in the top right corner", "in the upper right"),
    "left": ("on the left", "at the centre left", "in the middle of the left side"),
    "centre": ("in the centre", "in the middle", "at the centre"),
    "right": ("on the right", "at the centre right", "in the middle of the right side"),
    "bottom left": ("at the bottom left", "in the bottom left corner", "in the lower left"),
    "bottom": ("at the bottom", "at the bottom centre", "in the lower middle"),
    "bottom right": ("at the bottom right", "in the bottom right corner", "in the lower right"),
}
TO_POS = {p: tuple(w.replace("at the ", "to the ").replace("in the ", "to the ").replace("on the ", "to the ")
                   for w in ws) for p, ws in POS_WORDS.items()}
BG_WORDS = {"white": ("white",), "black": ("black", "dark"), "grey": ("grey", "gray"), "sand": ("sand", "beige", "sandy"),
            "striped": ("striped", "stripy")}
BG_NOUN = ("background", "backdrop")


def a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def obj_phrase(rng: random.Random, o: Obj, with_pos: bool = True) -> str:
    np = f"{rng.choice(SIZE_WORDS[o.size])} {o.colour} {o.shape}"
    if rng.random() < 0.2:
        np = f"{o.colour} {rng.choice(SIZE_WORDS[o.size])} {o.shape}" if rng.random() < 0.3 else np
    np = a(np)
    return f"{np} {rng.choice(POS_WORDS[o.pos])}" if with_pos else np


def bg_phrase(rng: random.Random, bg: str) -> str:
    return f"{a(rng.choice(BG_WORDS[bg]))} {rng.choice(BG_NOUN)}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(rng: random.Random, scene: Scene) -> str:
    objs = list(scene.objects)
    rng.shuffle(objs)
    things = _join([obj_phrase(rng, o) for o in objs])
    bg = bg_phrase(rng, scene.background)
    t = rng.randrange(4)
    if t == 0:
        return f"{things} on {bg}"
    if t == 1:
        return f"on {bg} there {'is' if len(objs) == 1 else 'are'} {things}"
    if t == 2:
        return f"{bg} with {things}"
    return f"a picture of {things}, {bg}"


def ref(rng: random.Random, scene: Scene, o: Obj, allow_it: bool = True) -> str:
    """Name an object unambiguously: its colour and shape, or 'it' when it is alone."""
    if allow_it and len(scene.objects) == 1 and rng.random() < 0.5:
        return "it"
    return f"the {o.colour} {o.shape}"


def ref_by(rng, scene: Scene, o: Obj, keep: str) -> str:
    """Name an object by the attribute a change keeps ("shape" or "colour"), adding its place when that alone is
    ambiguous: world v2's modifications describe what the target shows, not what the reference had, so a
    composed query is pulled towards the target and not back towards the reference."""
    if len(scene.objects) == 1 and rng.random() < 0.5:
        return "it"
    noun = o.shape if keep == "shape" else f"{o.colour} {rng.choice(('one', 'object', 'shape'))}"
    if sum(getattr(x, keep) == getattr(o, keep) for x in scene.objects) > 1:
        return f"the {noun} {rng.choice(POS_WORDS[o.pos])}"
    return f"the {noun}"


def change_colour(rng, scene, o, colour):
    r = ref_by(rng, scene, o, "shape")
    new = f"{colour} {o.shape}"
    return rng.choice([f"make {r} {colour}", f"{r} should be {colour} instead", f"paint {r} {colour}",
                       f"show {a(new)} instead", f"{r} becomes {a(new)}"])


def change_shape(rng, scene, o, shape):
    r = ref_by(rng, scene, o, "colour")
    new = f"{o.colour} {shape}"
    return rng.choice([f"turn {r} into {a(shape)}", f"make {r} {a(shape)}", f"{r} should be {a(shape)}",
                       f"replace {r} with {a(new)}", f"show {a(new)} instead"])


def change_size(rng, scene, o, size):
    r = ref(rng, scene, o)
    comp = rng.choice(("bigger", "larger")) if size == "large" else "smaller"
    verb = "enlarge" if size == "large" else "shrink"
    return rng.choice([f"make {r} {comp}", f"{verb} {r}", f"make {r} {rng.choice(SIZE_WORDS[size])}"])


def move(rng, scene, o, pos):
    r = ref(rng, scene, o)
    return rng.choice([f"move {r} {rng.choice(TO_POS[pos])}", f"put {r} {rng.choice(POS_WORDS[pos])}",
                       f"shift {r} {rng.choice(TO_POS[pos])}"])


def add(rng, scene, o):
    p = obj_phrase(rng, o)
    return rng.choice([f"add {p}", f"also include {p}", f"put {p} in as well", f"there should also be {p}"])


def remove(rng, scene, o):
    r = ref(rng, scene, o, allow_it=False)
    return rng.choice([f"remove {r}", f"take away {r}", f"delete {r}", f"without {r}"])


def change_background(rng, scene, bg):
    w = rng.choice(BG_WORDS[bg])
    n = rng.choice(BG_NOUN)
    return rng.choice([f"make the {n} {w}", f"change the {n} to {w}", f"put it on {a(w)} {n}",
                       f"use {a(w)} {n} instead"])


def compound(rng, t1: str, t2: str) -> str:
    return rng.choice([f"{t1} and {t2}", f"{t1}, then {t2}", f"{t1}; also {t2}"])
