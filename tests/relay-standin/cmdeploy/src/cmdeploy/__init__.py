"""Stand-in for the relay deployment tool (tests only)."""
