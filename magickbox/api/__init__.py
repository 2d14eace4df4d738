"""The node's HTTP side: an authenticated REST API (FastAPI, with OpenAPI) and a web UI,
served by uvicorn in the node process (:class:`.server.HttpServer`).

``store``   the only module that touches the node's internals (jobs, files, buckets)
``tokens``  hashed API tokens (``magickbox tokens``)
``app``     REST routes; ``ui`` the web pages; ``streams`` zip downloads and live logs;
``uploads`` safe checks of uploaded zip archives; ``search`` safe search patterns
"""
