"""Shared pieces of the application benchmarks: workload graphs, modes, runners, reports."""
