"""The store: everything that persists, and the only place with SQL or a database driver.

    home      a store's folder: layout, the one-writer lock, atomic writes
    cdt       world arrays, one ``.npz`` per world (and the one place their name is made)
    sqlite/   the database: schema + migrations, the writer actor, tables (records as
              rows), rows (operations as statements), queries (reads)
    export    the export format (JSON), pure
    backup    seal, check, list and restore backups
    verify    the checks ``ublox-sim verify`` runs
    local     ``LocalStore``: the open store, delegating to the above
    sync      ``UbloxLocalStorage``: the seed's synchronous API over ``LocalStore``

Nothing here imports actors, the engine, sim, server or the CLI
(``tests/test_architecture.py`` checks it).
"""
