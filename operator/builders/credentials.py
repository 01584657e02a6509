"""Object-storage credentials of the Ray pods, by reference to the Secret `spec.storage.credentialsSecret` names.

fusionrec.storage reads credentials from the environment only (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL_S3; GOOGLE_APPLICATION_CREDENTIALS naming a key file), so on a
cluster the pods are given that environment from the Secret:

- s3://: one `envFrom: [{secretRef: {name}}]` on every Ray container, as KubeRay users write it by hand. The
  Secret's keys are the variable names storage.py reads, so the operator keeps no list of keys that could drift
  from it, and `kubectl create secret generic NAME --from-env-file=s3.env` takes the very file a workstation
  sources. (`env[].valueFrom.secretKeyRef` per key would pin that list here; KServe's way, a ServiceAccount
  annotated with S3 settings, would have the operator create ServiceAccounts and read Secrets' contents, to end
  with the same environment.)
- gs://: storage.py wants a key *file*, so the Secret is mounted read-only and GOOGLE_APPLICATION_CREDENTIALS
  names its key `gcloud-application-credentials.json` (KServe's key name). Its keys are not put in the
  environment: a key file has no business there.

Only the Secret's name is in the generated objects: the kubelet resolves it when it starts a pod, so no value
passes through the FusionRecommender, the operator, the RayJob, the RayService or the manifest ConfigMap. With
no Secret named nothing is added, and s3:// uses the pods' own identity (IRSA's web identity, EKS Pod Identity)
through the AWS SDK's default chain, which storage.py allows.

Every Ray container of a FusionRecommender gets the same credentials: the training head (the driver, which
publishes the version) and workers (which read data and checkpoints), and the serving head and workers (which
fetch the artifacts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fusionrec.errors import UserError
from fusionrec.operator import consts
from fusionrec.operator.builders.common import OBJECT_STORAGE_SCHEMES, spec_uris
from fusionrec.spec import FusionRecommenderSpec

FIELD = "spec.storage.credentialsSecret"
VOLUME = "storage-credentials"


@dataclass(frozen=True)
class PodCredentials:
    """What every Ray container gets for object storage: environment, and for gs:// the key file's volume."""

    env: list[dict[str, Any]] = field(default_factory=list)
    env_from: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)


def object_storage_schemes(spec: FusionRecommenderSpec) -> set[str]:
    """The object-storage schemes (s3://, gs://) of the URIs the spec names."""
    return {scheme for uri in spec_uris(spec) for scheme in OBJECT_STORAGE_SCHEMES if uri.startswith(scheme)}


def pod_credentials(spec: FusionRecommenderSpec) -> PodCredentials:
    secret = spec.storage.credentials_secret
    if secret is None:
        return PodCredentials()
    schemes = object_storage_schemes(spec)
    out = PodCredentials()
    if "s3://" in schemes:
        out.env_from.append({"secretRef": {"name": secret}})
    if "gs://" in schemes:
        out.volumes.append({"name": VOLUME, "secret": {"secretName": secret}})
        out.mounts.append({"name": VOLUME, "mountPath": consts.STORAGE_CREDENTIALS_DIR, "readOnly": True})
        out.env.append({"name": "GOOGLE_APPLICATION_CREDENTIALS",
                        "value": f"{consts.STORAGE_CREDENTIALS_DIR}/{consts.GCS_CREDENTIALS_KEY}"})
    return out


def check_credentials_secret(spec: FusionRecommenderSpec) -> None:
    """A credentialsSecret with no object-storage URI to use it would be silently ignored by every pod: refused."""
    secret = spec.storage.credentials_secret
    if secret is not None and not object_storage_schemes(spec):
        raise UserError(
            f"names Secret {secret!r}, but no URI of this spec is in object storage (s3://, gs://), so no pod would "
            "use it", field=FIELD,
            fix="remove spec.storage.credentialsSecret, or put spec.storage.uri (or training.storagePath, or the "
                "data files) on s3:// or gs://")


def missing_secret_error(secret: str, namespace: str) -> UserError:
    """What the FusionRecommender's status says when its credentialsSecret is not in its namespace."""
    return UserError(
        f"Secret {secret!r} does not exist in namespace {namespace!r}; the training and serving pods read their "
        "object-storage credentials from it, so no RayJob is started until it does", field=FIELD,
        fix=f"kubectl create secret generic {secret} -n {namespace} --from-literal=AWS_ACCESS_KEY_ID=... "
            "--from-literal=AWS_SECRET_ACCESS_KEY=... (for gs://: --from-file=gcloud-application-credentials.json="
            "KEY.json), or remove spec.storage.credentialsSecret to use the pods' own identity (IRSA)")
