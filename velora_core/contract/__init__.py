"""The torch-free contract shared by the CLI, the API, the worker and the dashboard: the run spec
(``spec``), method settings (``method_configs``), model shapes and datasets (``presets``), comparison
presets (``comparison_presets``), results and status sets (``result``), the comparison table
(``table``), the project's hashes (``hashing``) and the one-line validation-error format (``errors``).

Nothing here imports torch, so the web backend and the dashboard import it freely.
"""
