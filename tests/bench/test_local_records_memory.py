"""Local datasets are read a record at a time (issue 22.2): a 300 MB JSON array peaked at 2.48 GB, so
the service's 2 GiB dataset limit admitted ~17 GB of worker memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.backend.harness import REPO_ROOT

MIB = 1024**2

_MEASURE = """
import resource, sys
from velora_core.bench.data.records import local_records
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
count = sum(1 for _ in local_records(sys.argv[1]))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(count, after - before)
"""


def _peak_growth(path: Path) -> tuple[int, int]:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    count, growth = done.stdout.split()
    return int(count), int(growth)


@pytest.mark.parametrize("suffix", [".json", ".txt"])
def test_a_large_local_dataset_is_read_without_holding_it(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"big{suffix}"
    line = "word " * 40
    records = 200_000  # ~40 MB
    with path.open("w") as out:
        if suffix == ".json":
            out.write(
                "[\n" + ",\n".join(json.dumps({"text": f"{i} {line}"}) for i in range(records)) + "\n]\n"
            )
        else:
            out.write("".join(f"{i} {line}\n\n" for i in range(records)))
    size = path.stat().st_size
    count, growth = _peak_growth(path)
    assert count == records
    assert growth < size / 4, f"reading {size / MIB:.0f} MiB grew the process by {growth / MIB:.0f} MiB"


def test_a_json_array_streams_the_same_records_and_names_a_bad_item(tmp_path: Path) -> None:
    from velora_core.bench.data.records import local_records

    path = tmp_path / "small.json"
    items = [{"text": "a, [b]"}, {"text": "c", "n": [1, {"x": "]"}]}]
    path.write_text(json.dumps(items, indent=2))
    assert list(local_records(path)) == items
    path.write_text('[{"text": "a"}, 5]')
    with pytest.raises(ValueError, match="item 1 is a JSON int, not an object"):
        list(local_records(path))
    path.write_text('[{"text": "a"}, {"text": ')
    with pytest.raises(ValueError, match="item 1 is not JSON"):
        list(local_records(path))
