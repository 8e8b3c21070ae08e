"""CADC: the content-adaptive one-step diffusion codec (model, entropy coding, bitstream, bundles).

Modules: :mod:`.config` (CADCConfig), :mod:`.layers` (codec networks),
:mod:`.entropy_models` (factorized prior, Gaussian conditional),
:mod:`.model` (CADCModel, training forward), :mod:`.text` (BFATC / prompts),
:mod:`.coding` (range coding), :mod:`.codec` (CADCCodec), :mod:`.bundle`
(create/save/load bundles), :mod:`.knob_values` (λ/Δ code mapping).
Submodules are imported on demand so that importing the package stays cheap.
"""
