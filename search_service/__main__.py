"""Entry point: ``python -m search_service`` (or ``imagesearch-search``)."""

from __future__ import annotations

from search_service.app import SearchApp
from search_service.settings import ENV_PREFIX, SearchSettings
from service_core.main import run_main


def main() -> None:
    run_main(
        SearchApp,
        SearchSettings,
        prefix=ENV_PREFIX,
        service_name="imagesearch-search",
        description="Semantic image search: stores embeddings, answers searches.",
    )


if __name__ == "__main__":
    main()
