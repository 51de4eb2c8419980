"""HTTP serving: an OpenAI-compatible completions API, CodeGeeX task endpoints and a playground.

``python -m codegeex_ms.serve --config tiny --checkpoint model.ckpt`` (see ``__main__``);
:mod:`.app` holds the routes, :mod:`.schemas` the request validation and :mod:`.worker` the single
model thread with its bounded queue and batching.
"""
