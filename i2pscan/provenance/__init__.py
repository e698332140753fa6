"""Provenance evidence from a file's own bytes: where metadata lives in a container (containers),
C2PA manifests through the offline SDK (c2pa, the only c2pa importer), generator tables and
parameter parsers (generators), and how the evidence is weighed (evidence)."""
