"""Evaluation: metrics (metrics.py), the retrieval engine (engine.py), protocols (protocols.py), `zscir eval`
on the registered benchmarks (benchmarks.py, cli.py), `zscir score` for rankings made elsewhere (score.py,
rankings.py), test-server files (submission.py), the synthetic world's evaluation (world.py) and HTML
reports (report.py)."""
