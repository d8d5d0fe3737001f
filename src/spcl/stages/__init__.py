"""Pipeline stages: each exposes run(ctx) and writes one folder of the run directory."""
