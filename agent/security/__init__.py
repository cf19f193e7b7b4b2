"""Security source parts: parsers, followers and checks used by agent/sources/security.py."""
