"""The review page: a static folder (``index.html`` and ``thumbs/``) that moderators open offline.

``build_page(report, out_dir)`` reads a scan report in row groups, makes thumbnails (flagged files
first, by score, up to a cap), and writes one HTML file that embeds the rows as JSON, the page's
script and style inline (allowed by their hashes in a strict Content-Security-Policy), and a
score histogram per provenance class as inline SVG. The template, script and style are package
data beside this file.
"""

from i2pscan.report.review.build import (DEFAULT_MAX_THUMBS, PageSummary, build_page, open_in_browser)

__all__ = ["DEFAULT_MAX_THUMBS", "PageSummary", "build_page", "open_in_browser"]
