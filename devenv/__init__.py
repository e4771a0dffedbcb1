"""The system on a developer's machine: its PostgreSQL cluster, the stack harness, sample data."""
