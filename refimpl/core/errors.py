"""The ``kind`` of each ``Reply`` the core gives: one name per reason, shared by every driver."""

OK = "ok"
INVALID_REQUEST = "invalid_request_error"
MODEL_NOT_FOUND = "model_not_found"
MODEL_NOT_LOADED = "model_not_loaded"
ALREADY_RUNNING = "model_already_running"
NOT_RUNNING = "model_not_running"
LOAD_FAILED = "model_load_failed"
INSUFFICIENT_MEMORY = "insufficient_memory"
# Upstream's answer when it runs out of capacity (#28774); this router never gives it (capacity
# queues), but properties/invariants.py names it.
LIMIT_REACHED = "model_limit_reached"
ALREADY_EXISTS = "model_already_exists"
DOWNLOAD_FAILED = "model_download_failed"
REMOVED = "model_removed"
