import math

import pytest
import torch
import torch.nn.functional as F

from zscir.errors import InputError
from zscir.methods import check_alpha, get_method_class, list_methods
from zscir.methods.slerp import slerp


def _unit(*xs):
    return F.normalize(torch.tensor([xs], dtype=torch.float32), dim=-1)


def test_slerp_endpoints_and_midpoint():
    v, w = _unit(1.0, 0.0), _unit(0.0, 1.0)
    assert torch.allclose(slerp(v, w, 0.0), v, atol=1e-6)
    assert torch.allclose(slerp(v, w, 1.0), w, atol=1e-6)
    mid = slerp(v, w, 0.5)
    assert torch.allclose(mid, _unit(1.0, 1.0), atol=1e-6)
    # constant angular speed: at alpha, the angle to v is alpha * 90 degrees
    q = slerp(v, w, 0.25)
    assert math.degrees(math.acos(float((q * v).sum()))) == pytest.approx(22.5, abs=1e-3)


def test_slerp_falls_back_when_vectors_coincide():
    v = _unit(0.3, 0.4)
    out = slerp(v, v.clone(), 0.7)
    assert torch.isfinite(out).all() and torch.allclose(out, v, atol=1e-6)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "x"])
def test_alpha_outside_unit_interval_is_refused(bad):
    with pytest.raises(InputError, match="alpha"):
        check_alpha(bad)


def test_registry_has_the_baselines():
    assert list_methods()[:4] == ["image", "text", "sum", "slerp"]
    with pytest.raises(InputError, match="unknown method"):
        get_method_class("nope")


@pytest.mark.slow
def test_methods_on_default_backbone(default_backbone):
    px = torch.randn(2, 3, 96, 96)
    texts = ["make it red", "move the star to the left"]
    with torch.no_grad():
        v = default_backbone.encode_image(px)
        w = default_backbone.encode_text(texts)
        outs = {n: get_method_class(n)(default_backbone).compose(px, texts) for n in ["image", "text", "sum", "slerp"]}
    assert torch.allclose(outs["image"], v, atol=1e-5)
    assert torch.allclose(outs["text"], w, atol=1e-5)
    assert torch.allclose(outs["sum"], F.normalize(v + w, dim=-1), atol=1e-5)
    assert torch.allclose(outs["slerp"], slerp(v, w, 0.8), atol=1e-5)
    for o in outs.values():
        assert torch.allclose(o.norm(dim=-1), torch.ones(2), atol=1e-5)
    # the fast path (reference = gallery embedding) agrees with the full path
    with torch.no_grad():
        fast = get_method_class("slerp")(default_backbone).compose_embedded(v, texts)
    assert torch.allclose(fast, outs["slerp"], atol=1e-5)
    # an empty modification (official benchmark files have a few) is answered, not refused: text-only embeds
    # its neutral prompt, interpolation methods return the reference unchanged
    with torch.no_grad():
        blank = get_method_class("text")(default_backbone).compose(None, ["   "])
        assert torch.allclose(blank, default_backbone.encode_text(["a photo"]), atol=1e-5)
        for n in ("sum", "slerp"):
            q = get_method_class(n)(default_backbone).compose(px, ["", texts[1]])
            assert torch.allclose(q[0], v[0], atol=1e-5) and torch.allclose(q[1], outs[n][1], atol=1e-5)
    with pytest.raises(InputError, match="reference image"):
        get_method_class("slerp")(default_backbone).compose(None, ["x"])
