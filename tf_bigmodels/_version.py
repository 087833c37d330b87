"""The package's version, in a module of its own: export and the run directory's records read
it without loading the rest of the package."""

__version__ = "0.1.0"
