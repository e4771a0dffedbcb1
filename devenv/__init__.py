"""Development helpers: the local PostgreSQL cluster."""
