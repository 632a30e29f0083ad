"""Read a conformance report: the first (unfixed) toy adapter of ``toy_adapter.py`` run by the
``flowspec conformance`` command, with the JSON report read back."""
import json
import os
import sys
import tempfile

from flowspec import cli

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # so that --impl finds toy_adapter

with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "report.json")
    code = cli.main(["conformance", "--impl", "toy_adapter:ToyAdapter", "--kinds", "elementwise_affine",
                     "--dtypes", "float64", "--quiet", "--json", path])
    with open(path) as fh:
        document = json.load(fh)

print("exit code", code)                      # 1: some property failed
assert code == 1
records = {r["property"]: r for r in document["results"]}
passed = records["inverse_round_trip"]
print(passed["status"], passed["max_error"] <= passed["tolerance"])
failed = records["bad_input_rejected"]
print(failed["status"], failed["message"].splitlines()[0])
print(records["grad_matches_reference"]["status"], records["grad_matches_reference"]["message"])
print(sorted(document["coverage"]["elementwise_affine"]))
