"""Policies: JSON in, a validated frozen model out; every error names its JSON path."""
