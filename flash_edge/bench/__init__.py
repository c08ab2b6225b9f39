"""flash-bench: latency, memory, size and quality per backend and precision."""
