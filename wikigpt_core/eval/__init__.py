"""The evaluation battery: perplexity, judge-free harness, pairwise judge, gallery, report."""
