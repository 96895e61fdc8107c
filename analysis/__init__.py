"""Collecting run records into tables and plots."""
