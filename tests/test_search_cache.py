"""The service's per-settings method cache stays bounded whatever alphas clients send."""

from zscir.index import search as search_mod


class _Index:
    def check_method(self, m):  # the manifest check is tested elsewhere
        pass


def test_method_cache_is_bounded_and_keeps_the_recent(default_backbone):
    s = search_mod.Searcher(_Index(), default_backbone)
    first = s.method("slerp", alpha=0.5)
    for i in range(search_mod.METHOD_CACHE_SIZE + 10):
        s.method("slerp", alpha=i / 1000)
        s.method("slerp", alpha=0.5)  # used again and again: never evicted
    assert len(s._methods) == search_mod.METHOD_CACHE_SIZE
    assert s.method("slerp", alpha=0.5) is first
    assert s.method("slerp", alpha=0.001).alpha == 0.001
