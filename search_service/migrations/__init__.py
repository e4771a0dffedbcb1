"""SQL migrations, applied in order by search_service.migrations."""
