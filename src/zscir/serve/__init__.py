"""`zscir serve INDEX`: a thin FastAPI service over the same Searcher as `zscir search`."""
