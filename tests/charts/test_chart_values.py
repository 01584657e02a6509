"""values.schema.json refuses bad values before anything reaches a cluster, naming the field."""

from __future__ import annotations

import json

import pytest
import yaml

from _chart_helpers import CHART, RELEASE, run_helm, set_args

BAD_VALUES = [
    # (--set arguments, what helm's message must contain)
    (("replicaCount=-1",), ("/replicaCount", "minimum")),
    (("replicaCount=2",), ("/replicaCount", "maximum")),
    (("logLevel=verbose",), ("/logLevel", "must be one of", "'warning', 'info', 'debug', 'trace'")),
    (("image=null",), ("missing property 'image'",)),
    (("image.repository=null",), ("/image", "missing property 'repository'")),
    (("image.repository=",), ("/image/repository", "minLength")),
    (("image.repository=fusionrec/operator:1.0",), ("/image/repository", "does not match pattern")),
    (("image.digest=md5:abc",), ("/image/digest",)),
    (("operator.rayImage.repository=",), ("/operator/rayImage/repository",)),
    (("operator.rayImage.pullPolicy=Sometimes",), ("/operator/rayImage/pullPolicy", "must be one of")),
    (("operator.head.memory=lots",), ("/operator/head/memory",)),
    (("operator.prometheus.url=prometheus:9090",), ("/operator/prometheus/url",)),
    (("watchNamespaces={Recs_Prod}",), ("/watchNamespaces/0",)),
    (("replicas=1",), ("additional properties 'replicas' not allowed",)),
    (("monitoring.prometheusRule.servingErrorRateThreshold=2",),
     ("/monitoring/prometheusRule/servingErrorRateThreshold",)),
]


@pytest.mark.parametrize(("sets", "expected"), BAD_VALUES, ids=[" ".join(sets) for sets, _ in BAD_VALUES])
def test_bad_values_are_refused_naming_the_field(helm, sets, expected):
    for command in (("template", RELEASE, str(CHART)), ("lint", "--strict", str(CHART))):
        result = run_helm(helm, *command, *set_args(sets))
        output = result.stdout + result.stderr
        assert result.returncode != 0, f"helm {command[0]} accepted {sets}"
        if command[0] == "template":
            assert "values don't meet the specifications of the schema" in output, output
        for text in expected:
            assert text in output, f"helm {command[0]} with {sets}: {text!r} not in\n{output}"


def test_schema_covers_every_value_and_defaults_pass_it():
    """additionalProperties: false everywhere a key is known, so a typo in values.yaml is refused too."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict, value: dict, path: str) -> None:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node
        if node.get("type") != "object" or "properties" not in node:
            return
        assert node.get("additionalProperties") is False, f"{path or '/'} accepts unknown keys"
        for key, child in value.items():
            assert key in node["properties"], f"{path}/{key} is in values.yaml but not in the schema"
            if isinstance(child, dict):
                walk(node["properties"][key], child, f"{path}/{key}")

    walk(schema, values, "")


def test_good_values_are_accepted(helm):
    sets = ("replicaCount=0", "logLevel=trace", "watchNamespaces={recs,shop}", "image.digest=sha256:" + "c" * 64,
            "image.repository=registry.example.com:5000/team/fusionrec-operator",
            "operator.prometheus.url=https://prometheus.example.com", "operator.head.cpu=500m")
    result = run_helm(helm, "lint", "--strict", str(CHART), *set_args(sets))
    assert result.returncode == 0, result.stdout + result.stderr
