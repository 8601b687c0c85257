"""End to end on a tiny world: world -> pre-training -> evaluation of the baselines -> table, JSON, report."""

import json

import pytest

from zscir.experiments.demo import DemoConfig, run_demo

pytestmark = pytest.mark.slow  # every test here takes seconds (see README: make test-fast)

SCHEMA_CIRR = {"R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3"}
SCHEMA_CIRCO = {"mAP@5", "mAP@10", "mAP@25", "mAP@50"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    results = run_demo(DemoConfig(out=str(out), quick=True, size="tiny", methods="image,text,sum,slerp", examples=2))
    return out, results


def test_results_schema_and_files(demo_run, capsys):
    out, results = demo_run
    saved = json.loads((out / "results.json").read_text())
    assert saved["protocols"] == results["protocols"]
    assert saved["backbone"].startswith("default:") and saved["world"]["size"] == "tiny"
    for m in ("image", "text", "sum", "slerp"):
        assert set(saved["protocols"]["cirr"][m]) == SCHEMA_CIRR
        assert set(saved["protocols"]["circo"][m]) == SCHEMA_CIRCO
        assert all(0.0 <= v <= 100.0 for v in saved["protocols"]["cirr"][m].values())
    # the image baseline can never rank the (removed) reference, so Rs@3 over 5 candidates is >= 0 and R@50
    # covers most of a tiny gallery
    assert saved["protocols"]["cirr"]["image"]["R@50"] > 50.0
    # alpha is the grid point with the best mean of the four recall columns of the training-triplet ranking
    sel = saved["alpha_selection"]["slerp"]
    means = {a: sum(r[f"R@{k}"] for k in (1, 5, 10, 50)) / 4 for a, r in sel["recalls"].items()}
    assert set(means) == {str(round(0.1 * i, 1)) for i in range(11)}
    assert all(abs(means[a] - sel["score_mean(R@1,R@5,R@10,R@50)"][a]) < 0.02 for a in means)
    assert float(max(means, key=lambda a: (round(means[a], 2), -abs(float(a) - 0.8)))) == sel["chosen"]
    html = (out / "report.html").read_text()
    assert html.count("<section class=\"card\">") >= 2 and "data:image/png;base64," in html and "<svg" in html
    # the claims and calibration of this run, with their paired standard errors, as results.json has them
    assert "Published claims, checked on this run" in html and "World calibration on this run" in html
    assert "slerp beats sum" in html and "no baseline is the best of any cirr column" in html
    assert all("se" in c for c in saved["claims"] if c["claim"].startswith("slerp beats"))
    assert "within noise: " in next(r["measured"] for r in saved["calibration"] if r["check"].endswith("cirr column"))


def test_rerun_reuses_world_and_model(demo_run, tmp_path):
    out, first = demo_run
    again = run_demo(DemoConfig(out=str(tmp_path), quick=True, size="tiny", methods="image", examples=1))
    assert again["backbone_fingerprint"] == first["backbone_fingerprint"]  # the cached model, not a new one
    assert again["protocols"]["cirr"]["image"] == first["protocols"]["cirr"]["image"]


def test_unknown_method_is_refused(demo_run, tmp_path):
    from zscir.errors import InputError

    with pytest.raises(InputError, match="unknown method"):
        run_demo(DemoConfig(out=str(tmp_path), quick=True, size="tiny", methods="image,bogus"))
