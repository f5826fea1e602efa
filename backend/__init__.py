"""VeLoRA Bench service backend: settings, SQL store, REST API and the broker client.

Never imports torch: runs are enqueued by task name with their id only (docs/architecture.md).
"""
