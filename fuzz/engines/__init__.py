"""Engines: where traces come from (the generator, random, hypothesis, atheris, exhaustive
layouts, explored schedules) and how they run in parallel."""
