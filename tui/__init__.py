"""The Textual operator console (issue 6)."""
