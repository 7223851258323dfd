"""Offline stand-ins for SAEBench's hub datasets: same columns / files and label meaning as the
dataset each replaces, so SAEBench's own loaders and metric code read them unchanged once their
folders are mapped with :func:`sae_core.datasets.mirror.dataset_overrides`.

- :mod:`.common` -- the hub ids, SAEBench's gender ids, :func:`~.common.derived_seed`, the
  Parquet / JSON writers, :data:`~.common.CLASSES_FILE` (each defined once);
- one module per SAEBench dataset, holding its toy builder ``build_toy`` and / or its
  real-language builder ``build_real``: :mod:`.bias_in_bios`, :mod:`.ravel`, :mod:`.text_corpus`
  (openwebtext + pile), :mod:`.absorption`, :mod:`.europarl`, :mod:`.github_code`, :mod:`.ag_news`,
  :mod:`.sae_probes_data` (sae-probes' bundled datasets, pseudo-id ``sae_core/sae_probes_data``)
  (:mod:`.geography` holds the real cities both bias_in_bios and ravel use);
- the entry points :func:`.toy.build_eval_datasets` and :func:`.real.build_real_eval_datasets`,
  each ``(out_dir, seed, ...) -> {hub id: folder}``.

Nothing loads on ``import sae_core.datasets.standins``; import the module you need.
"""
