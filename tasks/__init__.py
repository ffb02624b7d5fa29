"""Prefect tasks: thin wrappers that call one patchrec function and pass paths and small records."""
