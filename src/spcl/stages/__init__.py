"""Pipeline stages: each module has run(ctx, out_dir, ...) and writes one run-directory folder."""
