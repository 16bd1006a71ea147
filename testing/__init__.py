"""The local OpenAI-compatible test server (not installed with em): tests and benchmarks import it from the
repository root."""
