"""The PostgreSQL backend (issue #14): the same ``Backend`` protocol over asyncpg."""
