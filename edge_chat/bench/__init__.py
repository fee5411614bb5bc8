"""`edge_chat bench`: measure.py (one model in a child process: load, prefill, decode,
memory), prompts.py (prompts of an exact token count), concurrency.py (clients at once),
edit.py (the code-edit workload), plot.py (the chart)."""
