"""Provenance evidence from a file's own bytes: where metadata lives in a container (containers,
with its limits in found and XMP in xmp), C2PA manifests through the offline SDK (c2pa, the only
c2pa importer), the generator table and the claims it makes (generators), and how the evidence is
weighed into the report's columns and a reason (evidence)."""
