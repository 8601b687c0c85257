"""The benchmark registry: everything `zscir eval` and `zscir score` know about a benchmark is declared by the
benchmark's own module, so adding one is one file and no central list.

A benchmark is a `Benchmark` subclass decorated with `@register_benchmark("name")`:

    @register_benchmark("cirr")
    class CIRR(Benchmark):
        title = "CIRR"                        # how messages spell it
        subsets = ("",)                       # parts evaluated separately ("" = the whole split)
        official_counts = EXPECTED            # the official full-split sizes its loader checks
        template_fields = {"caption"}         # fields `--template` may use
        protocol = "reference removed; ..."   # one line recorded in every results JSON
        def load(...)        -> BenchmarkSplit          the loader
        def evaluate(...)    -> {"metrics": ...} or {"files": [...]}    the protocol for one subset
        def aggregate(...)   -> the summary numbers over subsets        (default: the mean of each metric)
        def table_rows(...)  -> the rows of the standard table          (default: one row per subset)
        def score_subset(...) -> metrics for rankings made elsewhere    (optional: makes it `zscir score`-able)

Where the benchmarks come from (on the first lookup, once): every module of the `zscir.datasets` package
(pkgutil), then every entry point of the group `zscir.benchmarks`, so a benchmark shipped by another
distribution registers the same way. A test can register one directly with the decorator.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from zscir.datasets.base import BenchmarkSplit, Query
from zscir.errors import InputError

if TYPE_CHECKING:
    import os

    import torch

    from zscir.eval.benchmarks import EvalSettings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "zscir.benchmarks"


class Benchmark:
    """What one benchmark declares. Subclass it, set the attributes, implement `load` and `evaluate`, and
    override the other hooks where the defaults do not fit. One instance serves every run (hooks keep no
    state)."""

    name: str = ""  # set by register_benchmark
    title: str = ""  # how messages spell it (defaults to the name)
    subsets: tuple[str, ...] = ("",)  # evaluated separately and aggregated; ("",) = one whole split
    subset_noun: tuple[str, str] = ("subset", "subsets")  # singular, plural: how messages call a subset
    official_counts: Mapping[Any, Mapping[str, int]] = {}  # the official full-split sizes
    template_fields: frozenset[str] = frozenset({"caption"})
    protocol: str = ""  # one line recorded in the results JSON
    test_split_refusal: str = ""  # why `--split test` is refused; "" = test ranks and writes server files
    subset_predictions: bool = False  # `zscir score` also reads a per-group rankings file

    # --- data ----------------------------------------------------------------------------------------------

    def load(self, root: str | os.PathLike[str], subset: str = "", split: str = "val", strict_counts: bool = False,
             check_images: bool = True) -> BenchmarkSplit:
        """One subset of one split, every file checked (check_images=False: skip the image files where the
        loader can; `zscir score` needs only annotations)."""
        raise NotImplementedError

    def modification_texts(self, query: Query, caption_order: str) -> list[str]:
        """The text variants of one query (their query features are averaged); every query has the same
        number. `caption_order` is the `--caption-order` setting, for benchmarks with several captions."""
        return [query.texts[0] if query.texts else ""]

    def is_blank(self, query: Query) -> bool:
        """Whether the official file gives this query no modification text (kept, answered, counted)."""
        return not query.texts or not query.texts[0].strip()

    def text_settings(self, settings: EvalSettings) -> dict[str, Any]:
        """Text settings recorded next to the template in the results JSON."""
        return {}

    # --- protocol --------------------------------------------------------------------------------------

    def evaluate(self, split: BenchmarkSplit, queries: torch.Tensor, gallery: torch.Tensor,
                 settings: EvalSettings) -> dict[str, Any]:
        """The protocol for one subset, on L2-normalised query (Q, D) and gallery (N, D) embeddings in the
        order of `split.queries` / `split.gallery`: {"metrics": {...}, ...} when the split has targets, else
        {"files": [server files written under settings.submission_dir]}."""
        raise NotImplementedError

    def aggregate(self, per: dict[str, dict[str, Any]]) -> dict[str, float]:
        """The summary numbers over the subsets' results: the one subset's metrics, or each metric's mean."""
        ms = [r["metrics"] for r in per.values() if "metrics" in r]
        if not ms:
            return {}
        if len(ms) == 1:
            return dict(ms[0])
        return {k: sum(m[k] for m in ms) / len(ms) for k in ms[0]}

    def table_rows(self, doc: dict[str, Any], average: str) -> list[str]:
        """The standard table's header and rows for a results document (`average` labels a row over
        subsets: "average" or "average (partial)")."""
        per = doc["results"]
        if len(self.subsets) == 1:
            m = doc["summary"]
            cols = [k for k, v in m.items() if _is_number(v)]
            return [table_header(cols), table_row(self.name, [m[c] for c in cols])]
        cols = [k for k, v in next(iter(per.values()))["metrics"].items() if _is_number(v)]
        s = doc["summary"]
        return ([table_header(cols)] + [table_row(k, [r["metrics"][c] for c in cols]) for k, r in per.items()]
                + [table_row(average, [s[c] for c in cols if c in s])])

    # --- scoring rankings made elsewhere (`zscir score`) ---------------------------------------------------

    def score_subset(self, split: BenchmarkSplit, predictions: Mapping[str, list[str]],
                     subset_predictions: Mapping[str, list[str]] | None, where: str) -> dict[str, Any]:
        """{"data": ..., "metrics": ...} for {query id: ranked gallery ids} of one subset's queries. Not
        overriding it leaves the benchmark out of `zscir score`."""
        raise NotImplementedError

    def prediction_subset(self, qid: str) -> str:
        """Which subset a predictions file's query id belongs to: the one subset, or the `<subset>` of a
        `<subset>-<i>` id (FashionIQ's)."""
        return self.subsets[0] if len(self.subsets) == 1 else qid.rsplit("-", 1)[0]

    @property
    def scorable(self) -> bool:
        return type(self).score_subset is not Benchmark.score_subset


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def table_header(cols: Sequence[str]) -> str:
    """A header line of the standard table: an 18-wide name column, then 10-wide value columns."""
    return f"{'':<18}" + "".join(f"{c:>10}" for c in cols)


def table_row(name: str, values: Sequence[float]) -> str:
    return f"{name:<18}" + "".join(f"{v:>10.2f}" for v in values)


# --- the registry ---------------------------------------------------------------------------------------

B = TypeVar("B", bound=type[Benchmark])
_BENCHMARKS: dict[str, Benchmark] = {}
_discovered = False


def register_benchmark(name: str) -> Callable[[B], B]:
    """Class decorator: make a benchmark available to `zscir eval` (and `zscir score`) by name."""

    def deco(cls: B) -> B:
        old = _BENCHMARKS.get(name)
        # a module imported again (importlib.reload) re-registers its own class; any other clash is a bug
        if old is not None and (type(old).__module__, type(old).__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"benchmark {name!r} registered twice ({type(old).__module__} and {cls.__module__})")
        cls.name = name
        cls.title = cls.__dict__.get("title") or name
        _BENCHMARKS[name] = cls()
        return cls

    return deco


def unregister_benchmark(name: str) -> None:
    """Forget a benchmark (tests that register a throw-away one clean up with it)."""
    _BENCHMARKS.pop(name, None)


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    import zscir.datasets as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        # another distribution's broken plug-in must not take the built-in benchmarks down with it
        try:
            loaded = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plug-in only warns (comment above)
            log.warning("benchmark plug-in %s (%s) failed to load: %s", ep.name, ep.value, e)
            continue
        if isinstance(loaded, type) and issubclass(loaded, Benchmark) and loaded.name not in _BENCHMARKS:
            register_benchmark(ep.name)(loaded)


def get_benchmark(name: str) -> Benchmark:
    _discover()
    try:
        return _BENCHMARKS[name]
    except KeyError:
        raise InputError(f"unknown benchmark {name!r}; expected one of {', '.join(list_benchmarks())}") from None


def list_benchmarks(scorable: bool = False) -> list[str]:
    """Registered benchmark names, sorted (scorable=True: only those `zscir score` reads rankings for)."""
    _discover()
    return sorted(n for n, b in _BENCHMARKS.items() if b.scorable or not scorable)


def submission_dir(settings: EvalSettings) -> Path:
    """Where `--split test` writes server files."""
    return settings.submission_dir or Path(".")
