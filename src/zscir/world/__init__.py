"""The synthetic CIR world: scenes as data, rendering, language, modifications, generation and loading."""

from zscir.world.generate import SIZES, generate_world
from zscir.world.load import World, load_world

__all__ = ["generate_world", "load_world", "World", "SIZES"]
