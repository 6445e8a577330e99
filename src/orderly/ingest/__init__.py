"""ingest: numbers accepted over HTTP come out of the daemon in acceptance order."""
