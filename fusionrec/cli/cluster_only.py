"""What the CLI says of spec fields only a cluster acts on, so that none is ignored without a word.

The manifest a workstation runs is the one a cluster gets, so such fields are accepted here (refusing them
would make one document unusable in one of the two places) and named once on stderr, with what applies instead.
"""

from __future__ import annotations

from fusionrec.spec import FusionRecommenderSpec


def cluster_only_notes(spec: FusionRecommenderSpec) -> list[str]:
    notes = []
    secret = spec.storage.credentials_secret
    if secret:
        notes.append(f"note: spec.storage.credentialsSecret {secret!r} is a cluster Secret and is not read here; "
                     "object-storage credentials come from this environment (AWS_ACCESS_KEY_ID and "
                     "AWS_SECRET_ACCESS_KEY, or GOOGLE_APPLICATION_CREDENTIALS)")
    return notes
