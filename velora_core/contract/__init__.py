"""The torch-free contract shared by the CLI, the API, the worker and the dashboard: the run spec
(``spec``), workloads (``workload_registry``), method settings (``method_configs``, ``method_parts``),
presets (``presets/``: model shapes, comparison presets), results and status sets (``result``), the
comparison table (``table``), intervals (``intervals``), the run plan (``plan``), the "will it fit"
request and answer (``fit_request``), the project's hashes (``hashing``) and the one-line
validation-error format (``errors``).

Nothing here imports torch, so the web backend and the dashboard import it freely.
"""
