"""The process -> infer (per block) -> assemble (per scene) -> observe chain: the logic the
Lambda handlers call, one module per step.

Each step is idempotent, because Step Functions retries, redrives and re-runs:

- :func:`~inference.steps.process.process` lists the input prefix (one paginated listing),
  hashes only keys it has not seen with the same ETag, registers each object by the sha256 of
  its bytes (a duplicate upload under another key becomes an alias of the existing scene),
  validates new scenes (a bad input is quarantined with its reason; the run goes on), plans
  each scene to predict as blocks (sized for the infer timeout from the champion's measured
  throughput, see :mod:`inference.blocks`) and writes the run's manifests: the blocks still to
  predict of every scene that lacks a prediction by the champion (including what a crashed run
  left behind), and the list of those scenes. With a challenger named, its version goes in the
  output (the shadow pass, :mod:`inference.shadow`) and the manifests also list the scenes
  whose shadow comparison a crashed or failed pass left unfinished.
- :func:`~inference.steps.infer.infer` predicts one block with the champion process planned
  the run with (the item's ``model_version``; cached in ``MODEL_CACHE_DIR`` across warm calls,
  the pointer never re-read, so a promotion mid-run takes effect at the next run) under its
  scene's lease, and writes the block's rasters and sums to one file. A block already
  predicted is a no-op.
- :func:`~inference.steps.assemble.assemble` builds a scene whose blocks are all predicted
  into class + confidence COGs, a quicklook, a STAC item and a summary under deterministic keys
  (``<OUTPUT_URI>/<sha256>/<model_version>/``, so a re-run overwrites rather than duplicates),
  records the prediction, its lineage and its scene metrics in one transaction, and removes the
  block outputs. A scene already predicted by that model version is a no-op.
- :func:`~inference.steps.observe.observe` aggregates the run's scenes, computes drift against
  the export's reference statistics, writes run metrics and closes the run.
- :func:`~inference.steps.failure.record_failure` is the state machine's Catch path.

What the steps share lives beside them: :mod:`inference.payloads` (the manifest items),
:mod:`inference.errors`, :mod:`inference.transactions` (the ledger), :mod:`inference.model_cache`
(the loaded model), :mod:`inference.inputs` (listing and reading scenes),
:mod:`inference.storage_endpoint` and :mod:`inference.block_prediction`.
"""
