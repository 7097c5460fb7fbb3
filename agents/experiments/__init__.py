"""The experiments: many runs, compared with statistics.

* ``comparison`` (agents or variants x seeds on one task, ``diffusion-gym compare``), ``stats`` (its t-intervals);
* ``bench`` (the task suite x agents x seeds and its leaderboard, ``diffusion-gym bench``), ``bench_stats``
  (rliable's IQM, stratified bootstrap CIs, probability of improvement, performance profiles);
* ``presets``: the HERD paper's experiments on Stable Diffusion v1.5.
"""
