"""The HTTP API. It never imports `workers/` or torch: jobs reach workers by task name."""
