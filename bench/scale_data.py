#!/usr/bin/env python3
"""Scale a Synthea NDJSON export by cloning it N times with new, consistent ids.

Every UUID in a resource (its id, references such as `Patient/<uuid>` or `urn:uuid:<uuid>`,
identifiers that repeat the id) is mapped to a new UUID derived from the copy number and the
old UUID, the same way in every file, so references stay consistent inside each copy and
copies never collide. Copy 0 keeps the original ids.

    bench/scale_data.py SRC_DIR OUT_DIR COPIES
"""

import gzip
import re
import sys
import uuid
from pathlib import Path

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
NAMESPACE = uuid.UUID("6f1c1c3e-8a43-4c7e-9d59-2f0c3f0c9a11")


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    src, out, copies = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.iterdir() if p.name.endswith((".ndjson", ".ndjson.gz")))
    if not files:
        sys.exit(f"no NDJSON files in {src}")
    total = 0
    for path in files:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        name = path.name.removesuffix(".gz").removesuffix(".ndjson")
        target = out / f"{name}.ndjson.gz"
        with gzip.open(target, "wt", encoding="utf-8", compresslevel=1) as w:
            for copy in range(copies):
                cache: dict[str, str] = {}

                def remap(m: re.Match, copy: int = copy, cache: dict = cache) -> str:
                    old = m.group(0)
                    new = cache.get(old)
                    if new is None:
                        new = str(uuid.uuid5(NAMESPACE, f"{copy}/{old}"))
                        cache[old] = new
                    return new

                for line in lines:
                    w.write(line if copy == 0 else UUID.sub(remap, line))
                    if not line.endswith("\n"):
                        w.write("\n")
                total += len(lines)
        print(f"{target.name}: {len(lines) * copies} resources", flush=True)
    print(f"wrote {total} resources ({copies} copies) to {out}")


if __name__ == "__main__":
    main()
