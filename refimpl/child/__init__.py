"""The child: a llama-server-compatible server for one model, as a router spawns per loaded model.

Run it with ``python -m refimpl.child -m MODEL.gguf --port N``. Built on llama-cpp-python; see
``app`` and ``openai`` for what it takes from ``llama_cpp.server``, ``runtime`` for its states and the line
protocol it speaks to a router (ROUTER.md sections 1-3).
"""
