"""Profiling: measured host records, imported device-app records and labelled roofline estimates."""
