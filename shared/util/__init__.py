"""Small helpers every layer may use: atomic writes, process trees, tables, figures.

This package imports nothing else from EndoFed (it is the bottom layer).
"""
