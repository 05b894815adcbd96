"""cryptostats: a live, queryable record of cryptocurrency market stats."""

__version__ = "0.1.0"
