"""The ``kind`` of each ``Reply`` the core gives: one name per reason, shared by every driver."""

OK = "ok"
INVALID_REQUEST = "invalid_request_error"
MODEL_NOT_FOUND = "model_not_found"
MODEL_NOT_LOADED = "model_not_loaded"
ALREADY_RUNNING = "model_already_running"
NOT_RUNNING = "model_not_running"
LOAD_FAILED = "model_load_failed"
INSUFFICIENT_MEMORY = "insufficient_memory"
ALREADY_EXISTS = "model_already_exists"
DOWNLOAD_FAILED = "model_download_failed"
REMOVED = "model_removed"
QUEUE_FULL = "queue_full"  # 429: --queue-max requests wait already
PINNED_OUT = "pinned_models_full"  # 503: pinned models hold every slot or byte it needs
