"""Checkpoint: read a live process tree and its mount namespaces into images."""
