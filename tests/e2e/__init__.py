"""End-to-end tests: real agent processes, a real reference hub on 127.0.0.1, real SQLite."""
