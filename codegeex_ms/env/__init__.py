"""The process: shared-data paths (``paths``); MindSpore log level, mode, device (``runtime``)."""
