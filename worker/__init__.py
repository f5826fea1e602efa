"""Celery workers that run benchmark runs: ``celery -A worker.app worker -Q gpu`` (one per GPU)."""
