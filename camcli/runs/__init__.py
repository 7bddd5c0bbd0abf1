"""Runs: the one batch loop every command shares and each command's per-batch work.

* :mod:`~camcli.runs.settings`: the typed, frozen settings of a run;
* :mod:`~camcli.runs.work`: the contract between a command and the engines (batch work,
  image outputs, reporter, summary);
* :mod:`~camcli.runs.loop`: the local engine: reuse, decoding, device work, bounded writes,
  the index; :mod:`~camcli.runs.on_ray`: the Ray engine (`--engine ray`);
* :mod:`~camcli.runs.runtime`: signals, torchrun ranks, the run summary (``run.json``);
* per command: :mod:`~camcli.runs.explain` (with :mod:`~camcli.runs.targets` for several
  targets), :mod:`~camcli.runs.features`, :mod:`~camcli.runs.compare`.
"""
