"""items: CRUD in PostgreSQL, a Redis list cache never stale after a write, a change log in ClickHouse."""
