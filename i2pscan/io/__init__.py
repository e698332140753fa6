"""Paths in, pixels out: which files a scan reads (discover), decoding one file robustly (decode),
crops at native resolution (preprocess), pixel operations and perturbations (pixels), what a worker
does with one file (work), the isolated decode pool (pool), the training DataLoader (loader), and
files on disk (files). The only package that imports Pillow."""
