"""Helpers shared by the tests (importable through pytest's `pythonpath` setting)."""
