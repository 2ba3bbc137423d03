"""The crossbar: :mod:`.config` (CrossbarConfig) -> :mod:`.mapping` (weights to cell digits) ->
:mod:`.program` (one layer on one chip; :mod:`.program_torch` on a torch device) -> :mod:`.mvm` (the
fast forward) checked against :mod:`.mvm_ref` (the float64 specification)."""
