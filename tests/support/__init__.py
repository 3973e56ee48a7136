"""Helpers shared by the test tiers (tests import these, never each other)."""
