"""Which store a deployment gets: Redis when REDIS_URL is set, else the embedded SQLite file."""

from __future__ import annotations

from authproxy.config.schema import Config
from authproxy.sessions.store import SessionStore


def create_store(config: Config) -> SessionStore:
    if config.session.redis_url is not None:
        from authproxy.sessions.redis import RedisStore

        return RedisStore(config.session.redis_url.reveal(), prefix=config.session.redis_prefix)
    from authproxy.sessions.sqlite import SQLiteStore

    return SQLiteStore(config.server.data_dir / "sessions.sqlite3")
