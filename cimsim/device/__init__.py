"""Device models: measured data (:mod:`.measured`) -> fit (:mod:`.fit`, ``python -m cimsim.fit``) ->
:class:`.model.DeviceModel` (levels, programming error over read time, read noise, stuck cells,
drift; presets in ``device_models/``). numpy only."""
