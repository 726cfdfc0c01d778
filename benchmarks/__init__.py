"""The benchmark scripts (run each as `python benchmarks/bench_NAME.py` or `rag bench NAME`); shared code in common.py."""
