"""SQL provenance catalog of generated videos (SQLite or PostgreSQL)."""

from tasks.catalog.errors import CatalogError
from tasks.catalog.models import Video
from tasks.catalog.store import (
    CATALOG_URL_ENV,
    Catalog,
    default_catalog_url,
    has_password,
    hide_password,
    open_catalog,
    plain_url,
    redact,
    resolve_catalog_url,
)

__all__ = [
    "CATALOG_URL_ENV",
    "Catalog",
    "CatalogError",
    "Video",
    "default_catalog_url",
    "has_password",
    "hide_password",
    "open_catalog",
    "plain_url",
    "redact",
    "resolve_catalog_url",
]
