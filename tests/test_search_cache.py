"""The service keeps one method per name whatever alphas clients send: a setting is a cheap copy that shares
every weight, so memory stays bounded and the cached method is never changed by a request."""

from zscir.index import search as search_mod


class _Index:
    def check_method(self, m):  # the manifest check is tested elsewhere
        pass


def test_one_method_per_name_whatever_the_alphas(default_backbone):
    s = search_mod.Searcher(_Index(), default_backbone)
    first = s.method("slerp", alpha=0.5)
    for i in range(search_mod.METHOD_CACHE_SIZE + 10):
        assert s.method("slerp", alpha=i / 1000).alpha == i / 1000
    assert len(s._methods) == 1
    base = s.method("slerp")
    assert base.alpha == 0.8 and first.alpha == 0.5  # copies never change the cached method
    assert first.backbone is base.backbone  # weights shared, not copied
    assert s.method("slerp", alpha=0.001).alpha == 0.001
