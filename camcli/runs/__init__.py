"""Runs: the one batch loop every command shares and each command's per-batch work.

* :mod:`~camcli.runs.settings`: the typed, frozen settings of a run;
* :mod:`~camcli.runs.loop`: reuse, decoding, device work, bounded writes, the index;
* :mod:`~camcli.runs.runtime`: signals, torchrun ranks, the run summary (``run.json``);
* per command: :mod:`~camcli.runs.explain` (with :mod:`~camcli.runs.targets` for several
  targets), :mod:`~camcli.runs.features`, :mod:`~camcli.runs.compare`.
"""
