"""The process environment: where shared data lives (``paths``) and MindSpore's process-wide
settings (``runtime``: log level, execution mode, device, seed). Imports nothing of the package."""
