"""Helpers the tests share (imported as ``helpers.<module>``; tests never import each other)."""
