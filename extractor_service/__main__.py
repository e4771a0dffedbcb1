"""Entry point: ``python -m extractor_service`` (or ``imagesearch-extractor``)."""

from __future__ import annotations

from extractor_service.app import ExtractorApp
from extractor_service.settings import ENV_PREFIX, ExtractorSettings
from service_core.main import run_main


def main() -> None:
    run_main(
        ExtractorApp,
        ExtractorSettings,
        prefix=ENV_PREFIX,
        service_name="imagesearch-extractor",
        description="Semantic image search: turns images into CNN embeddings.",
    )


if __name__ == "__main__":
    main()
