"""The ``velora-bench`` command: its entry point and engine commands (``main``), "will it fit" flags
(``fit_command``) and the warm-up of a fit process that waits for its request (``fit_warmup``),
reading specs (``spec_input``) and printing tables (``table_output``), the last two torch-free and
shared with the service's ``velora-bench submit``."""
