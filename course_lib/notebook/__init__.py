"""Notebook helpers: chapter set-up, widgets, exercises, concept figures, run profiles, time estimates."""
