"""Restore: rebuild dumped mount namespaces in a fresh private namespace."""
