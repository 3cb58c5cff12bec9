"""The project's benchmarks and harnesses, run from the repository root as modules:

    python -m benchmarks.bench_loader | bench_train | bench_fid | faults | soak | quality

(see benchmarks/README.md). As modules they import this checkout's `dcgan_dist` (the repository
root is on sys.path) and each other (`launcher`) without any path set-up.
"""
