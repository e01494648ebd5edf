"""Prompt building and structured turns for each role."""
