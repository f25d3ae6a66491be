"""Stand-in for the relay's chatmaild package: only its ini template."""
