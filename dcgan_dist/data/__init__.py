"""Data: sources turned into webdataset shards once (`shards`, `sources`), streamed back per rank and worker (`stream`)."""
