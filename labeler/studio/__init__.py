"""Label Studio I/O: the client that owns the connection, tasks and predictions, the labelling
config, the "Next to label" queue, bulk pre-annotation and export."""
