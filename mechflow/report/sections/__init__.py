"""One builder per report section: ``build(ctx, page, section)``."""
