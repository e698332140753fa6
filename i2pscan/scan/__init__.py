"""Scanning: options resolved once (options), report rows and the verdict policy (rows), one scan's
life from files to report (session), and Ray as an executor (ray, the only ray importer)."""
