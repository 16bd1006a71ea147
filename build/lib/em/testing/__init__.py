"""Test helpers shipped with the package (the local OpenAI-compatible server), also used by benchmarks."""
