#!/usr/bin/env bash
# The verdict suite of issue 28, in priority order: every step is one bench command into one bench folder, so
# the leaderboard covers them all. Resumable: rerun this script and finished runs are only summarised,
# interrupted ones resume from their checkpoints. Every finished run's summary files are archived in ARCHIVE
# (commit it): on another machine, the script restores them first and goes on where the archive stops.
#
#     bash benchmarks/verdict_suite.sh                 # about 4 hours for issue 28, 5 with the NFT steps (2 cores)
#     bash benchmarks/verdict_suite.sh --summarise     # only the leaderboard of what is finished (no training)
set -u
OUT=${BENCH_OUT:-runs/bench}
ARCHIVE=${BENCH_ARCHIVE:-docs/experiments/data/2026-12-07-bench-suite}
PY=${PYTHON:-python}
bench() { "$PY" -m agents.experiments.bench --output-dir "$OUT" --archive "$ARCHIVE" --jobs 2 "$@" || echo "step failed: $*"; }

if [ "${1:-}" != "--summarise" ]; then
  bench --tasks long --agents ddpo,herd,loop --seeds 0-5                 # HERD vs DDPO early; the top of long
  bench --tasks long --agents ddpo-aa,ddpo-half-batch --seeds 0-5        # A/A no. 1 (with ddpo 0-5); sure handicap
  bench --tasks multi --agents ddpo,loop --seeds 0-5                     # LOOP K=4 vs PPO where prompts differ
  bench --tasks long --agents nft --seeds 0-5                            # issue 31's agent on the bench
  bench --tasks multi --agents nft --seeds 0-5                           # issue 31: its IQM on multi against DDPO's
  bench --tasks long --agents herd-b2 --seeds 0-5                        # HERD-b2 vs HERD
  bench --tasks long --agents ddpo,ddpo-aa --seeds 6-11                  # A/A no. 2
  bench --tasks heldout --agents ddpo --seeds 0-5                        # generalisation to unseen prompts
  bench --tasks long --agents ddpo-tenth-lr --seeds 0-5                  # a handicap above long's MDE: detected?
  bench --tasks long --agents ddpo,ddpo-aa --seeds 12-17                 # A/A no. 3
  bench --tasks long --agents ddpo-tenth-lr --seeds 6-11                 # that handicap on 12 seeds (ddpo 6-11 ran)
  bench --tasks proxy --agents dpok,dpok-nokl --seeds 0-5                # DPOK's KL against over-optimisation (~8 min a run)
  bench --tasks long --agents ddpo-half-lr --seeds 0-5                   # the subtle handicap (below the MDE)
  bench --tasks long --agents nft-t16 --seeds 0-5                        # issue 31: more information per sample?
  bench --tasks long --agents nft-two-std --seeds 0-5                    # issue 31: every sample pushes?
fi
# the leaderboard of the verdicts (seeds 0-5), committed as docs/experiments/leaderboard.{json,md} and figures
"$PY" -m agents.experiments.bench --summarise-only --output-dir "$OUT" --archive "$ARCHIVE" --tasks long,multi,proxy,heldout \
  --agents ddpo,herd,loop,herd-b2,nft,nft-t16,nft-two-std,ddpo-aa,ddpo-half-batch,ddpo-half-lr,ddpo-tenth-lr,dpok,dpok-nokl --seeds 0-5
cp "$OUT/leaderboard.json" "$OUT/leaderboard.md" docs/experiments/
cp "$OUT/leaderboard_iqm.png" docs/experiments/leaderboard-iqm.png
cp "$OUT/gold_curves.png" docs/experiments/leaderboard-gold-curves.png
