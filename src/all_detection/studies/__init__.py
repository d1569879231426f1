"""What the reproduction studies share: one model run (training and evaluation) repeated per protocol,
fold or input mode without copying a node, the headline numbers of each, and their MLflow records.

A study is a list of variants: each is the project's own pipelines under a namespace (`paper`,
`fold_2`, `masked_input`), its datasets saved by the catalog's `{run}.*` patterns, its parameters the
project's except those it overrides in conf. So a change to training or evaluation reaches every study,
and kedro-viz shows each variant as one box. `wiring` composes the variants, `nodes` and `figures` hold
the work they share.
"""
