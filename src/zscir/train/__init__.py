"""Training loops. This package imports the library; the library never imports it (a test checks)."""
