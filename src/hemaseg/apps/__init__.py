"""Where users already work, on top of the pipelines: the local web page and the napari plugin."""
