"""Data: sources turned into webdataset shards once (`sources`, `shards`), streamed back per rank and
worker (`stream`), image sets read for FID (`imagesets`); every image decoded, and every generated
image turned into pixels, by `images`."""
