"""fusionrec.operator: the FusionRecommender Kubernetes operator (kopf, KubeRay, Prometheus).

Imports nothing heavy: the operator image carries pydantic, kopf, httpx and prometheus-client, not torch.
Entry points: `python -m fusionrec.operator` (run it), `python -m fusionrec.operator.crd` (the CRD).
"""
