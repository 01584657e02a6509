"""fusionrec.serving: the Ray Serve application that answers recommendation requests (design.md section 6).

    app.py          build_app(args): the `import_path` the operator and `fusionrec serve` deploy
    config.py       the app's typed args and the Serve options derived from the spec
    deployments.py  ModelServer (one per version, @serve.batch), Ingress (the router), MetricsHub
    api.py          the FastAPI app of the ingress: routes, auth and body-size guard, error mapping
    router.py       weighted sticky routing and per-version metrics, without Ray
    engine.py       a model replica's request handling (cache, fallback), without Ray
    scorer.py       one loaded artifact: ids, user tower, top-k, pointwise scores
    topk.py, cache.py, routing.py, auth.py, metrics.py, schemas.py, errors.py: the pieces
    local.py        a local Ray + Serve set up for these machines, and declarative deploys

Importing this package imports neither Ray nor torch; `app` and `deployments` import Ray.
"""
