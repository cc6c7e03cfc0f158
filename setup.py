# The metadata lives in pyproject.toml; this shim only keeps `python3 setup.py
# ...` working for tools and habits that still call it.
from setuptools import setup

setup()
