"""The built-in filesystem drivers, one package each; loaded through the same entry-point
group (``criu_fw.fsdrivers``) as third-party drivers."""
