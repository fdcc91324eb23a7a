"""HTTP: the collector, the query views and the live page."""
