"""Parrot server: sessions, the call graph, scheduling, the HTTP API and the engine."""
