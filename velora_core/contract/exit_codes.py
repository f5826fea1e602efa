"""The exit codes of every command (``velora-bench`` and its service commands, ``python -m
velora_core.bench.fit_estimate``), defined once: the API reads the fit subprocess's code, and scripts
read the CLI's. No torch."""

from __future__ import annotations

#: Done: every run completed, or ran out of memory (an out-of-memory is an answer).
EXIT_OK = 0
#: A run (or the command's own work) failed, or the service could not be reached.
EXIT_FAILED = 1
#: Bad input: a spec, a flag or a request the API refused with a 4xx.
EXIT_BAD_INPUT = 2
#: Stopped with Ctrl-C (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130
