"""Metrics (coco-caption's), split evaluation, the benchmark table, seed statistics and the HTML report."""
