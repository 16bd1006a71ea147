"""Benchmarks of `em` against the tools its users would otherwise use (``make bench``; docs/benchmarks.md).

Each benchmark runs both sides on the same machine, data and settings in one invocation, prints the ratio and
writes a JSON result under ``outputs/bench/`` (``EM_BENCH_DIR``):

- ``bench.train_throughput``: em's trainer vs TRL ``SFTTrainer`` (real tokens/s, padding, memory, loss agreement)
- ``bench.generation``: hf backend batched vs one prompt at a time (and vLLM where installed)
- ``bench.judging``: the OpenAI judge at concurrency 1 vs 32, cache reruns, output tokens per judgment
- ``bench.memory``: peak GPU memory of 8B QLoRA at max length 2048, batch 2
- ``bench.run_all``: the CPU benchmarks in a row, and the results table of docs/benchmarks.md
"""
