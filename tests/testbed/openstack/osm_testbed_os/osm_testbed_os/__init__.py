"""Plug-ins the osm test bed installs into its OpenStack venv (see ../../README.md)."""
