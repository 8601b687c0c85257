"""`zscir index --engine ray` on a local 2-CPU Ray instance writes the same shards as the single-process run."""

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own deprecations

from index_helpers import SPEC, contents  # noqa: E402
from zscir.index import GalleryIndex, Manifest  # noqa: E402
from zscir.index.runner import build_index  # noqa: E402
from zscir_fakes import write_gallery  # noqa: E402

pytestmark = pytest.mark.slow  # every test here takes seconds (see README: make test-fast)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_engine_equals_single_process(tmp_path, local_ray):
    write_gallery(tmp_path / "g", 26)
    (tmp_path / "g" / "bad.jpg").write_bytes(b"broken")
    local = build_index(tmp_path / "g", tmp_path / "local", SPEC, shard_size=8, batch_size=4, progress=False)
    dist = build_index(tmp_path / "g", tmp_path / "ray", SPEC, shard_size=8, batch_size=4, engine="ray",
                       ray_actors=2, progress=False)
    ids_a, emb_a = contents(tmp_path / "local")
    ids_b, emb_b = contents(tmp_path / "ray")
    assert ids_a == ids_b and len(ids_a) == 26
    assert np.array_equal(emb_a, emb_b)
    assert [s.sha256 for s in dist.shards] == [s.sha256 for s in local.shards]
    assert [s.failed for s in dist.shards] == [s.failed for s in local.shards]
    assert Manifest.load(tmp_path / "ray").complete and len(GalleryIndex(tmp_path / "ray")) == 26
