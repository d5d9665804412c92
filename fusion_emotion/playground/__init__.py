"""The web playground's page: static assets (HTML, CSS, ES modules, no build step, nothing from a CDN), the
QA-flag guide it shows, and the Starlette app that serves them. Mounted at ``/ui`` by the front end (when
its ``ui`` setting is on) and by ``fusion-emotion ui`` (fusion_emotion.ui), which both answer the page's
``POST /invocations`` and ``GET /stream`` themselves."""
