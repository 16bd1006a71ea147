"""The GPU check: ``python -m bench.gpu_check`` (see ``__main__``) and its pieces; docs/benchmarks.md, "GPU check"."""
