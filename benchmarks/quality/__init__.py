"""Generation quality on a fixed budget: train a config, pick the best checkpoint by FID, report it;
with --baseline, the plain Radford DCGAN on the same data and budget beside it.

    python -m benchmarks.quality CONFIG (--minutes M | --kimg K) [options] [key=value ...]

    python -m benchmarks.quality configs/fashion28.yaml --minutes 30 data.shards=/tmp/prep/fashion28
    python -m benchmarks.quality configs/banana64.yaml --minutes 30 data.shards=/tmp/prep/banana64
    python -m benchmarks.quality configs/quickstart.yaml --kimg 30 --fid-num 5000
    python -m benchmarks.quality configs/faces64.yaml --kimg 360 --baseline data.shards=data/faces64
    options: [--checkpoints 10] [--every-kimg E] [--launch launch/cpu.yaml] [--name NAME]
             [--run-dir runs/quality/NAME] [--reuse] [--baseline | --baseline-only] [--select-num 1000]
             [--fid-num 10000] [--ref-num 10000] [--inception PATH] [--docs docs/quality] [--progress-every 30]

Run it from the repository root. Everything runs through the project's real command lines, as
subprocesses, in this order:

1. Train: `accelerate launch --config_file LAUNCH -m dcgan_dist.train CONFIG [key=value ...]
   run.dir=RUN train.kimg=K train.minutes=M checkpoint.every_kimg=E checkpoint.keep=1000 eval.every_kimg=0`
   (no FID during training: the wall time is training alone). The budget `--minutes` counts from the
   launch: when it is spent the launcher gets SIGTERM, every rank saves a checkpoint and exits, and
   status.json must then say "stopped" (anything else is an error). The stop comes at the trainer's
   first tick at the earliest (before that it may not yet handle the signal). M is --minutes + 1:
   the trainer's own budget counts training time only, so it never ends the run before the SIGTERM
   does; it gives the trainer's progress bar its true end (0 without --minutes). `--kimg` stops by
   image count instead (train.kimg; 1,000,000 when only --minutes is given); with both, whichever
   comes first.
   Checkpoint spacing E aims at `--checkpoints` N (10) checkpoints and is rounded to whole ticks
   (train.tick_kimg; checkpoints happen at tick boundaries). With --kimg, E = K / N. With --minutes
   alone the speed is not known in advance, so the run is *calibrated*: it starts with no periodic
   checkpoints, is stopped by SIGTERM after three ticks (or two ticks and 10% of the budget) and
   resumed (resume=auto continues an interrupted run exactly) with
   E = img/s x max(time left - start-up, time left / 2) / (N - 1); img/s is the calibration's median
   tick speed after the first tick, start-up its time to the first tick. `--every-kimg E` sets the
   spacing and skips the calibration. The trainer's output goes to RUN/quality_train.log; the
   benchmark echoes its warnings and checkpoints, and prints a progress line every 30 s.
2. Select: FID of the kept checkpoints from `--select-num` samples each (`accelerate launch ... -m
   dcgan_dist.evaluate CKPT --num S --ref-num R --metrics fid`, same launch config): the learning
   curve, FID vs kimg. Should a speed estimate have been off and more than N + 1 checkpoints been
   kept, N + 1 of them are scored, spread evenly over the list, the first and the newest always
   included. The evaluate CLI caches the reference statistics on disk: only the first evaluation
   computes them.
3. Final: FID and KID of the best checkpoint (lowest selection FID; the earliest on a tie) from
   `--fid-num` samples (5,000-10,000 for reported numbers; when it equals --select-num they are
   the selection's samples again), `--metrics fid,kid`: KID x10^3 is the mean and std over the
   evaluate CLI's subsets.
4. Report: prints one Markdown row `| config | kimg | train wall time | img/s | best FID (N samples) |
   KID x10^3 | at kimg |`, records its evaluations in RUN/metrics.jsonl (the selection's FIDs and
   the final KID, marked "source": "benchmarks.quality"; a rerun replaces them), where the
   project's `report` reads a run's evaluations, and writes into `--docs` (docs/quality): NAME.json
   (every number, the command lines, the curve, the machine), NAME_curve.svg (`python -m
   dcgan_dist.report RUN --plot`: losses, D outputs, diversity, the FID curve with the best point
   starred, KID), NAME_grid.png (a sample grid of the best checkpoint from `python -m dcgan_dist.sample CKPT
   --grid`, or, in a checkout without that CLI, the run's samples/fakes_<kimg>.png nearest the best
   kimg), and the row in results.md (one row per NAME, replaced on a rerun, with links to the three
   files).

img/s is the median of the trainer's per-tick `Speed/img_per_sec` (stats.jsonl: training steps
only). The train wall time is the launcher's wall time, start-up and checkpoint saves included
(both launches when calibrated). NAME is the run name (the config file's name) unless --name.

Baseline (`--baseline`): steps 1-4 run twice, first for CONFIG, then for CONFIG with the plain
DCGAN recipe of Radford et al. as pytorch/examples trains it (baseline.RADFORD: z 100, widths 64,
non-saturating BCE with real target 1.0, no label flips, Adam 2e-4 with betas (0.5, 0.999) for both
nets, constant rate, BatchNorm in D, no spectral norm, dropout, R1, EMA or augmentation,
unconditional) put over the config and the overrides. Everything else is the config's: data,
flips, resolution, channels, batch, mixed precision, data loading, seed, and the same budget flags
and evaluation; so the two rows differ by the recipe alone. Under --minutes each gets the same
wall time (a slower recipe sees fewer images); under --kimg the same images. The baseline is
NAME_baseline (run directory RUN_baseline, its own docs files and results row), and a last line
gives project / baseline for FID and KID (below 1: the project's recipe is better).
--baseline-only trains and scores the baseline alone and compares it with the project's report
already in --docs (NAME.json; refused unless measured with the same config, overrides, budget,
--fid-num, Inception weights and reference set): the two sides on two machines, or a rerun of one.

Cost on a 2-core CPU (Inception ~12 img/s): reference statistics of 10,000 real images ~14 min
(once per data set and --ref-num, then cached), each 1,000-sample selection FID ~1.5-2 min,
a 10,000-sample final FID ~14 min: a 30-minute budget takes about 75 minutes in all (the first
time on a data set); --baseline doubles everything but the reference statistics. On a GPU the
evaluations take seconds.

Run directory (default runs/quality/NAME): a directory that already holds a run is refused
unless `--reuse`: then nothing is trained (the run must have been trained by this benchmark, with
the same config and overrides: RUN/quality_train.json) and evaluations already done with the same
sample counts (RUN/quality/fid_*.json) are reused, e.g. after an interrupted evaluation or to
report a larger --fid-num; with --baseline both run directories must hold such a run. Ctrl-C (or
SIGTERM) stops the running child cleanly (a trainer saves a checkpoint first) and exits 130.
Exit status: 0 done, 1 a step failed (the message names the step and its log), 2 bad arguments.

Modules: cli (arguments, the order of the steps), baseline (the Radford recipe), train and launch
(step 1), evaluate (steps 2-3), report (step 4), proc (child processes), common.
"""
