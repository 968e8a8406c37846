#!/usr/bin/env python3
"""Validation half of scripts/chart/check.sh (runs in the venv that has jsonschema and
kubernetes-validate).

  validate.py values SCHEMA VALUES_JSON [--expect-reject]
      Validate merged chart values (render --dump-values) against values.schema.json (draft-07).
      With --expect-reject, succeed only when the schema rejects them.
  validate.py manifests MIN_VERSION FILE
      Validate every object of a rendered multi-document YAML against the Kubernetes schemas of
      every version kubernetes-validate ships from MIN_VERSION to its newest, in strict mode
      (unknown fields are errors). Kinds without a core schema (the prometheus-operator
      ServiceMonitor) are skipped and reported.

Prints one line per check ("ok ..." / "FAIL ...") and a last line "RESULT <passed> <failed>".
"""
import json
import sys

import jsonschema
import yaml

SKIPPED_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def version_key(version):
    return tuple(int(part) for part in version.split(".")[:2])


def check_values(schema_path, values_path, expect_reject):
    with open(schema_path) as f:
        schema = json.load(f)
    with open(values_path) as f:
        values = json.load(f)
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(values), key=lambda e: list(e.absolute_path))
    messages = ["%s: %s" % ("/".join(str(p) for p in e.absolute_path) or "(top level)", e.message)
                for e in errors]
    if expect_reject:
        if errors:
            print("ok rejected as expected: " + "; ".join(messages))
            return 1, 0
        print("FAIL the schema accepted values it must reject")
        return 0, 1
    if errors:
        for message in messages:
            print("FAIL " + message)
        return 0, 1
    print("ok values match the schema")
    return 1, 0


def check_manifests(min_version, path):
    import kubernetes_validate
    from kubernetes_validate import utils

    versions = sorted({utils.major_minor(v) for v in utils.all_versions()}, key=version_key)
    versions = [v for v in versions if version_key(v) >= version_key(min_version)]
    if not versions:
        print("FAIL kubernetes-validate has no schema for %s or newer" % min_version)
        return 0, 1
    with open(path) as f:
        objects = [doc for doc in yaml.safe_load_all(f) if doc]
    if not objects:
        print("FAIL %s holds no objects" % path)
        return 0, 1
    passed = failed = 0
    skipped = set()
    for version in versions:
        problems = []
        checked = 0
        for obj in objects:
            key = (obj.get("apiVersion"), obj.get("kind"))
            name = "%s/%s" % (obj.get("kind"), obj.get("metadata", {}).get("name"))
            if key in SKIPPED_KINDS:
                skipped.add(name)
                continue
            try:
                kubernetes_validate.validate(obj, version + ".0", strict=True)
                checked += 1
            except kubernetes_validate.ValidationError as e:
                where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
                problems.append("%s at %s: %s" % (name, where, e.message))
            except Exception as e:  # schema not found, unsupported version...
                problems.append("%s: %s" % (name, getattr(e, "message", repr(e))))
        if problems:
            failed += 1
            print("FAIL Kubernetes %s: %s" % (version, "; ".join(problems)))
        else:
            passed += 1
            print("ok Kubernetes %s: %d objects valid (strict)" % (version, checked))
    for name in sorted(skipped):
        print("   skipped %s: a CRD kind, not in the core Kubernetes schemas" % name)
    return passed, failed


def main(argv):
    if len(argv) >= 3 and argv[0] == "values":
        passed, failed = check_values(argv[1], argv[2], "--expect-reject" in argv[3:])
    elif len(argv) == 3 and argv[0] == "manifests":
        passed, failed = check_manifests(argv[1], argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print("RESULT %d %d" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
