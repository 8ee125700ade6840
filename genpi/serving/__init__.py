"""Serving: an OpenAI-compatible endpoint over one loaded base model and its adapters.

One job per file:

* ``engine.py``: continuous batched generation with a prompt-prefix store (the decoding loop of the server and of
  ``genpi eval``);
* ``server.py``: the HTTP server (``genpi serve``, ``python -m genpi.serving.server``), requests in, chat
  completions out;
* ``local.py``: ``LocalServer``, the server as a child process on a loopback port (the embedded server of
  ``genpi synth``).
"""
