"""Data pipeline: raw logs -> validated canonical Parquet tables -> sequences and splits."""
