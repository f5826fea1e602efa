"""The torch-free contract shared by the CLI, the API, the worker and the dashboard: the run spec
(``spec``, with the names it may give a model or dataset: ``names``, and its mixed precision: ``precision``), the workload registry (``workload_registry``), method parts and their settings
(``method_parts``, ``method_settings``, ``method_configs``), presets (``presets/``: model shapes,
comparison presets), results and the run state machine (``result``), the comparison table
(``table``), intervals (``intervals``), the run plan (``plan``), the "will it fit" request and answer
(``fit_request``), the project's hashes (``hashing``), the one-line validation-error format
(``errors``), exit codes (``exit_codes``), the API prefix and error words (``http_api``) and how the
registries name code on the torch side (``code_reference``).

Nothing here imports torch, so the web backend and the dashboard import it freely.
"""
