"""Moved to turbovaed.export.lowering (the lowering belongs to the export stage); re-exported here."""

from turbovaed.export.lowering import latent_shape, mobile_graph  # noqa: F401
