"""Helpers shared by more than one test module (pytest puts tests/ on sys.path)."""
